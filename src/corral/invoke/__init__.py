"""corral.invoke"""
