"""corral.runtimeapi"""
