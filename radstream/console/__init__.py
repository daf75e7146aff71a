"""The RadStream console: studies, a study viewer and dashboards, live (radstream console) or static (radstream report)."""
