"""kvstore.transport"""
