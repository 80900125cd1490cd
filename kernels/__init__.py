"""kvstore.kernels"""
