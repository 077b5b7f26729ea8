"""What makes a feature vector: model entries and their registry, weights, the CPU's and GPU's capabilities, the CPU
engines, models of other libraries.
"""
