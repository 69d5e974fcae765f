"""Typed configuration: the schema (`schema`), its shared defaults (`defaults`), loading with overrides
(`load`), and the generated reference (`docs`). Nothing is imported here, so `defaults` stays cheap."""
