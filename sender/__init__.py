"""The sender worker and its provider adapters. Not built yet: see the open issues."""
