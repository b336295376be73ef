"""The ``translation`` zoo family: an English→German Transformer trained on gettext catalogs."""
