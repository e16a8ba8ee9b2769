"""Reports: tables, JSON, JUnit."""
