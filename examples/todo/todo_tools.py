"""The example's stateful tool: a to-do list, one per episode. Served to asymre by
scripts/pytools.py --class TodoList; each episode's list starts from its task's config
(`initial_config`: {"TodoList": {"items": [...], "done": [...]}})."""


class TodoList:
    """A to-do list: open items in order, and the items done."""

    def __init__(self, items=None, done=None):
        self.items = list(items or [])
        self.done = list(done or [])

    def add_item(self, item: str) -> str:
        """Adds an item at the end of the list.

        Args:
            item: what to do, in a few words.
        """
        if item in self.items:
            raise ValueError("%r is already on the list" % item)
        self.items.append(item)
        return "added %r" % item

    def list_items(self) -> list:
        """The open items, in order."""
        return list(self.items)

    def complete_item(self, item: str) -> str:
        """Marks an open item done.

        Args:
            item: the item, as listed.
        """
        if item not in self.items:
            raise ValueError("no open item %r" % item)
        self.items.remove(item)
        self.done.append(item)
        return "done: %r" % item

    def remove_item(self, item: str) -> str:
        """Removes an open item without doing it.

        Args:
            item: the item, as listed.
        """
        if item not in self.items:
            raise ValueError("no open item %r" % item)
        self.items.remove(item)
        return "removed %r" % item
