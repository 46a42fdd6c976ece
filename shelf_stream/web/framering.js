// The synchronised view's memory: the frames the page sent, as ImageBitmaps, by pts.
//
// A result names the pts of its frame; showing that very frame puts its boxes exactly on
// the objects, at the cost of showing the scene `latency` late. The ring is bounded (a
// frame that waited longer than `capacity` frames is not worth showing; its bitmap is
// closed), and every bitmap is closed exactly once: when it is evicted, answered by a
// Dropped, overtaken by a newer result, or replaced on screen. `open` counts the bitmaps
// alive, for the page's figures and the leak test.

export class FrameRing {
  constructor(capacity) {
    this.capacity = capacity;
    this.entries = []; // { pts, bitmap (null until createImageBitmap resolves), closed }
    this.open = 0;
  }

  get size() {
    return this.entries.length;
  }

  /** Remember the picture of `pts` (a canvas, copied now by createImageBitmap). */
  add(pts, source) {
    const entry = { pts, bitmap: null, closed: false };
    this.entries.push(entry);
    while (this.entries.length > this.capacity) this.close(this.entries.shift());
    createImageBitmap(source).then(
      (bitmap) => {
        this.open += 1;
        entry.bitmap = bitmap;
        if (entry.closed) this.release(entry); // evicted before it was ready
      },
      () => {
        entry.closed = true; // the source was unusable: nothing to show for this pts
      },
    );
  }

  /**
   * The entry for `pts`, handed over to the caller (who must close its bitmap), or null.
   * Older entries are closed: the view never goes back in time.
   */
  take(pts) {
    const index = this.entries.findIndex((entry) => entry.pts === pts);
    if (index < 0) return null;
    const older = this.entries.splice(0, index + 1);
    const entry = older.pop();
    for (const stale of older) this.close(stale);
    if (!entry.bitmap) {
      this.close(entry);
      return null;
    }
    entry.closed = true;
    return entry;
  }

  /** `pts` was dropped by the server: nothing will ever show it. */
  discard(pts) {
    const index = this.entries.findIndex((entry) => entry.pts === pts);
    if (index >= 0) this.close(this.entries.splice(index, 1)[0]);
  }

  clear() {
    for (const entry of this.entries) this.close(entry);
    this.entries = [];
  }

  /** Close a taken entry's bitmap (after it left the screen). */
  releaseTaken(entry) {
    this.release(entry);
  }

  close(entry) {
    entry.closed = true;
    this.release(entry);
  }

  release(entry) {
    if (entry.bitmap) {
      entry.bitmap.close();
      entry.bitmap = null;
      this.open -= 1;
    }
  }
}
