"""Protocol front ends: each decodes its requests, calls mimo.serving.inference, encodes replies."""
