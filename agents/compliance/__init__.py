"""The compliance agent: Hash-chained audit trail and the policies checked before every order."""
