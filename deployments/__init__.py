"""How flows are deployed, triggered and served on one machine: the local
stack of ``cicd up``, the webhook receiver."""
