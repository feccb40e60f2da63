"""Attacks kept in the repository (issue 13): each test is one way in, refused."""
