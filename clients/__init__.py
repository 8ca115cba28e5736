"""mimo.clients package."""
