"""kvstore.prefix_index"""
