"""corral.logs"""
