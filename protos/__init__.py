"""mimo.protos package."""
