"""kvstore.eviction"""
