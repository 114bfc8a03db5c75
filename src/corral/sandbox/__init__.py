"""corral.sandbox"""
