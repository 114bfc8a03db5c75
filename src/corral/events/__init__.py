"""corral.events"""
