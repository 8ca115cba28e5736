"""mimo.export package."""
