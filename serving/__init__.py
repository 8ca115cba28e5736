"""mimo.serving package."""
