"""The loader box: watches systems/, keeps every version, swaps between frames, undo/redo."""
