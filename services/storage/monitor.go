package storage

import (
	"context"
	"time"
)

// monitor checks the view's contact with its stream by a barrier, marks
// the view unhealthy (stale reads refused) when that fails, and restarts a
// consumer that stopped delivering: ordered consumers have been seen not to
// resume after reconnects and leader changes. It probes an idle view every
// monitorInterval, a view that trails an acknowledged write for
// lagTolerance, and at once when a sync found the view behind.
func (sh *shard) monitor(ctx context.Context) {
	defer close(sh.done)
	t := time.NewTicker(lagTolerance / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !sh.needsProbe() {
				continue
			}
		case <-sh.kick:
		}
		err := sh.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		if sh.healthy.Swap(err == nil) != (err == nil) {
			sh.log.Info("view health changed", "healthy", err == nil, "err", err)
		}
	}
}

// needsProbe says whether the view has been idle for monitorInterval, has
// trailed an acknowledged write for lagTolerance, or is marked unhealthy.
func (sh *shard) needsProbe() bool {
	return !sh.healthy.Load() || time.Since(sh.view.lastProgress()) >= monitorInterval || sh.lagging()
}

// lagging says whether the view has trailed a write this instance saw
// acknowledged for lagTolerance without applying anything meanwhile: a
// stale read would then miss a write acknowledged over a second ago. (An
// idle view's last progress is old; what counts is how long it has been
// behind, so the wait starts at pendingSince at the earliest.)
func (sh *shard) lagging() bool {
	if sh.view.appliedSeq() >= sh.acked.Load() {
		return false
	}
	since := time.Unix(0, sh.pendingSince.Load())
	if p := sh.view.lastProgress(); p.After(since) {
		since = p
	}
	return time.Since(since) >= lagTolerance
}

// probe publishes a barrier and waits for the view to apply it; a view
// that does not gets a new consumer from where it stopped.
func (sh *shard) probe(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	seq, err := sh.barrier.get(pctx)
	if err != nil {
		return err
	}
	if err = sh.view.wait(pctx, seq); err != nil && ctx.Err() == nil {
		applied := sh.view.appliedSeq()
		sh.log.Warn("view stalled; restarting its consumer", "applied", applied, "barrier", seq)
		rctx, rcancel := context.WithTimeout(ctx, probeTimeout)
		if rerr := sh.startConsumer(rctx, applied+1); rerr != nil {
			sh.log.Warn("view consumer restart failed", "err", rerr)
		}
		rcancel()
	}
	return err
}
