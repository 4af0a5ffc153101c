"""State stores (see ``vouch.rollout.state.Store``)."""
