"""The bundled demo: a service with injectable faults, and the story ``vouch demo`` tells."""
