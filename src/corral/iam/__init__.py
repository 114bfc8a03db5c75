"""corral.iam"""
