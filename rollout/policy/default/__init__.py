"""vouch's default policy, as Rego sources (``*.rego``) read by ``RegoPolicy.default()``; no Python here."""
