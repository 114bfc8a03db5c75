"""corral.metering"""
