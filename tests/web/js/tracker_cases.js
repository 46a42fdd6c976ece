// Synthetic scenes for tracker.js and framering.js whose right answers are known.
// Run by tests/web/test_page_modules.py; returns measured errors, the test judges them.
async function run(data) {
  const { BoxTracker, MotionHistory } = await import("/static/tracker.js");
  const { FrameRing } = await import("/static/framering.js");
  const { latencyMs, frameMs, speedPxPerMs } = data;
  const box = (x, y, w = 100, h = 80, classId = 0) => ({
    classId,
    label: "thing",
    score: 0.9,
    x1: x,
    y1: y,
    x2: x + w,
    y2: y + h,
  });
  const centreX = (b) => (b.x1 + b.x2) / 2;

  // Results of frames captured every frameMs, each arriving latencyMs later; between
  // arrivals the display asks for boxes every 16 ms. `truth(t)` is the object's x at t.
  function play(truth, { tracker, motion = null, endMs, onDisplay }) {
    let nextCapture = 0;
    const pending = [];
    for (let now = 0; now <= endMs; now += 4) {
      while (nextCapture <= now) {
        pending.push({ captureMs: nextCapture, x: truth(nextCapture) });
        nextCapture += frameMs;
      }
      while (pending.length && pending[0].captureMs + latencyMs <= now) {
        const r = pending.shift();
        tracker.update([box(r.x, 100)], r.captureMs, now, { motion });
        play.newest = r;
      }
      if (now % 16 === 0 && play.newest)
        onDisplay(now, tracker.boxes(now, now, motion), play.newest);
    }
  }

  // 1. A steady pan: compensated against raw.
  const steady = { compensated: [], raw: [] };
  const truth = (t) => 50 + speedPxPerMs * t;
  play(truth, {
    tracker: new BoxTracker(),
    endMs: 3000,
    onDisplay(now, boxes, newest) {
      if (now < 1000 || boxes.length !== 1) return;
      steady.compensated.push(Math.abs(boxes[0].x1 - truth(now)));
      steady.raw.push(Math.abs(newest.x - truth(now)));
    },
  });

  // 2. A pan that stops at 1500 ms; the phone's gyroscope says so, or nothing does.
  const stopMs = 1500;
  const stopping = (t) => 50 + speedPxPerMs * Math.min(t, stopMs);
  const afterStop = {};
  for (const withGyro of [true, false]) {
    const motion = new MotionHistory({ facing: "environment", fovDeg: 65 });
    motion.setFrame(640, 480);
    // The pan speed in the picture is focal · ω: the rotation rate that explains it.
    const omegaDegS = ((speedPxPerMs * 1000) / motion.focalPx) * (180 / Math.PI);
    if (withGyro) {
      for (let t = 0; t <= 3000; t += 10) {
        motion.add({ alpha: 0, beta: 0, gamma: t < stopMs ? omegaDegS : 0 }, t, 0);
      }
    }
    const errors = [];
    play(stopping, {
      tracker: new BoxTracker(),
      motion: withGyro ? motion : null,
      endMs: 2200,
      onDisplay(now, boxes) {
        if (now > stopMs && now <= stopMs + latencyMs && boxes.length === 1) {
          errors.push(Math.abs(boxes[0].x1 - stopping(now)));
        }
      },
    });
    afterStop[withGyro ? "gyro" : "noGyro"] = Math.max(...errors);
  }

  // 3. Fading: results stop; alpha over time, then the track is gone.
  const fading = new BoxTracker({ fadeStartMs: 400, fadeEndMs: 1200 });
  fading.update([box(10, 10)], 0, 100);
  const alphaAt = (t) => fading.boxes(t, t)[0]?.alpha ?? null;
  const fade = { at300: alphaAt(400), at900: alphaAt(900), at1400: alphaAt(1400) };

  // 4. Two objects of one class side by side keep their identities across results; a new
  //    one entering mid-pan moves with the scene from its first result.
  const two = new BoxTracker();
  const ids = [];
  for (let i = 0; i < 10; i += 1) {
    const t = i * frameMs;
    const dx = speedPxPerMs * t;
    const detections = [box(100 + dx, 100), box(300 + dx, 100)];
    if (i === 9) detections.push(box(500 + dx, 100));
    two.update(detections, t, t + latencyMs);
    ids.push(two.tracks.slice(0, 2).map((tr) => [tr.id, Math.round(tr.box.x1 - speedPxPerMs * t)]));
  }
  const newcomer = two.tracks.find((tr) => tr.box.x1 > 450);
  const sceneVx = newcomer ? two.velocity(newcomer)[0] : null;

  // 5. The synchronised view's ring closes every bitmap exactly once.
  const canvas = new OffscreenCanvas(64, 48);
  canvas.getContext("2d").fillRect(0, 0, 64, 48);
  const ring = new FrameRing(5);
  for (let pts = 0; pts < 8; pts += 1) ring.add(pts, canvas);
  await new Promise((resolve) => setTimeout(resolve, 200));
  const openAfterAdd = ring.open;
  const taken = ring.take(6); // 5 (older) is closed, 6 handed over, 7 stays
  const afterTake = {
    open: ring.open,
    size: ring.size,
    taken: taken?.pts,
    hasBitmap: !!taken?.bitmap,
  };
  ring.releaseTaken(taken);
  ring.discard(7);
  ring.add(8, canvas);
  ring.clear(); // before its bitmap exists: closed when it arrives
  await new Promise((resolve) => setTimeout(resolve, 200));
  const ringResult = { openAfterAdd, afterTake, openAtEnd: ring.open, sizeAtEnd: ring.size };

  return { steady, afterStop, fade, ids, sceneVx, ring: ringResult };
}
