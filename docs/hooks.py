"""mkdocs hooks: generated content is written into the pages at build time, never committed twice."""

METHODS_TABLE = "<!-- methods table -->"


def on_page_markdown(markdown: str, **_) -> str:
    """The methods table, from the catalogue (as `napari-medit methods --markdown` prints it)."""
    if METHODS_TABLE not in markdown:
        return markdown
    from napari_medit import catalogue

    return markdown.replace(METHODS_TABLE, catalogue.markdown_table())
