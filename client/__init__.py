"""kvstore.client"""
