package router

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/codec"
	"github.com/latchkey/latchkey/kit/limits"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/kit/watchspec"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"google.golang.org/protobuf/proto"
)

// A watch spans every shard: the router gives it an id, asks each shard's
// queue group to start that shard's feed (one storage instance per shard
// takes it), and answers with the cursor of every shard. Keepalives and
// cancels go to the watch's control subject, which every storage instance
// listens on; the instances feeding the watch answer with their shards, so
// a keepalive that does not hear from every shard is a 404: part of the
// watch is gone (its instance died) and the client resumes.

// controlWait bounds how long a keepalive waits for the feeding instances.
const controlWait = 2 * time.Second

func (s *Server) watchEndpoints() []service.Endpoint {
	return []service.Endpoint{
		{Name: "watch", Subject: s.subj.Public(subjects.KVWatch), Func: s.watch},
		{Name: "watch-keepalive", Subject: s.subj.Public(subjects.KVWatchKeepalive), Func: s.watchKeepalive},
		{Name: "watch-cancel", Subject: s.subj.Public(subjects.KVWatchCancel), Func: s.watchCancel},
	}
}

// checkWatch applies the contract's rules to a watch request; known are
// the shards a cursor may name.
func checkWatch(in *pb.WatchRequest, known map[string]bool) error {
	if in.Prefix != "" && in.Key != "" {
		return apierr.Errorf(apierr.ReasonPrefixAndKey, "a watch takes a prefix or a key, not both")
	}
	if in.Initial && len(in.Cursors) > 0 {
		return apierr.Errorf(apierr.ReasonInitialWithCursors, "initial and cursors exclude each other: a resume continues, initial starts over")
	}
	if err := watchspec.ValidDeliver(in.Deliver); err != nil {
		return err
	}
	if in.Key != "" {
		if err := limits.Request(&pb.GetRequest{Key: in.Key}, 0); err != nil {
			return err
		}
	}
	if len(in.Prefix) > limits.MaxKeyBytes {
		return apierr.Errorf(apierr.ReasonWatchPrefixLarge, "prefix is %d bytes; at most %d", len(in.Prefix), limits.MaxKeyBytes)
	}
	for id, c := range in.Cursors {
		if !known[id] {
			return apierr.Errorf(apierr.ReasonUnknownShard, "cursors name shard %q, which is not in the shard map %v", id, slices.Sorted(maps.Keys(known)))
		}
		if _, _, err := watchspec.ParseCursor(c); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) watch(ctx context.Context, r *service.Request) (proto.Message, error) {
	in := &pb.WatchRequest{}
	if err := r.Decode(in); err != nil {
		return nil, err
	}
	route := s.route.Load()
	known := map[string]bool{}
	for _, id := range route.watch {
		known[id] = true
	}
	for id := range route.removed {
		known[id] = true
	}
	if err := checkWatch(in, known); err != nil {
		return nil, err
	}
	startOfStream := "0-" + strconv.FormatInt(time.Now().UnixMilli(), 10)
	// start: shard id -> its cursor ("" = from now); optional shards may
	// fail (a removed shard whose storage is gone has nothing to drain).
	start, optional, fromStart := map[string]string{}, map[string]bool{}, map[string]bool{}
	id := in.WatchId
	switch {
	case in.WatchId != "" || len(in.Shards) > 0:
		// Extending a running watch with shards a move added: each from
		// its cursor or from its stream's start (what the move copied
		// there emits no events, so that is exactly the writes made on it).
		if !watchspec.ValidWatchID(in.WatchId) || len(in.Shards) == 0 {
			return nil, apierr.Errorf(apierr.ReasonInvalidWatchID, "extending a watch takes its watch_id (%q) and the shards to add", in.WatchId)
		}
		if in.Initial {
			return nil, apierr.Errorf(apierr.ReasonInitialWithCursors, "a watch is extended from cursors, not with initial")
		}
		for _, sid := range in.Shards {
			if !slices.Contains(route.watch, sid) {
				return nil, apierr.Errorf(apierr.ReasonUnknownShard, "shard %q is not one a watch covers now (%v)", sid, route.watch)
			}
			start[sid], fromStart[sid] = startOfStream, true
			if c, ok := in.Cursors[sid]; ok {
				start[sid], fromStart[sid] = c, false
			}
		}
	default:
		if in.Initial && route.target != nil {
			// A snapshot taken shard by shard while keys move between them
			// could show a key twice or miss it, as a merged scan could.
			return nil, apierr.Errorf(apierr.ReasonHandover, "a watch with initial waits while the shard set changes (epoch %d); retry", route.epoch)
		}
		id = nuid.Next()
		for _, sid := range route.watch {
			c, ok := in.Cursors[sid]
			if !ok && len(in.Cursors) > 0 && route.added[sid] {
				// A resume from before the move added this shard.
				c, fromStart[sid] = startOfStream, true
			}
			start[sid] = c
		}
		for sid, c := range in.Cursors {
			if route.removed[sid] {
				start[sid], optional[sid] = c, true
			}
		}
	}
	out := &pb.WatchResponse{WatchId: id, Cursors: map[string]string{}, Shards: route.watch}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for sid, cursor := range start {
		req := &pb.ShardWatchRequest{WatchId: id, Prefix: in.Prefix, Key: in.Key, Cursor: cursor,
			Initial: in.Initial, Deliver: in.Deliver, Json: r.JSON, CatchUpDone: in.CatchUpDone}
		wg.Go(func() {
			resp := &pb.ShardWatchResponse{}
			err := s.call(ctx, sid, watchspec.OpWatch, req, resp, nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if optional[sid] && !errors.Is(err, apierr.ErrConflict) && !errors.Is(err, apierr.ErrInvalid) {
					return
				}
				if firstErr == nil {
					firstErr = err
					cancel()
				}
				return
			}
			out.Cursors[sid] = resp.Cursor
			if fromStart[sid] {
				// Where this feed starts: it replays the stream first, so
				// a resume before its first event must start there too.
				out.Cursors[sid] = startOfStream
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		// Feeds that did start end now instead of at their keepalive
		// timeout (only the ones this request started, when extending).
		var only []string
		if in.WatchId != "" {
			only = in.Shards
		}
		s.control(context.Background(), id, subjects.WatchOpCancel, &pb.WatchCancelRequest{WatchId: id, Shards: only}, nil)
		var ae *apierr.Error
		if errors.As(firstErr, &ae) && ae.Reason == string(apierr.ReasonShardUnavailable) {
			return nil, apierr.Errorf(apierr.ReasonShardUnavailable, "%s (or none of its instances serves watches)", ae.Message)
		}
		return nil, firstErr
	}
	return out, nil
}

func (s *Server) watchKeepalive(ctx context.Context, r *service.Request) (proto.Message, error) {
	in := &pb.WatchKeepaliveRequest{}
	if err := r.Decode(in); err != nil {
		return nil, err
	}
	if !watchspec.ValidWatchID(in.WatchId) {
		return nil, apierr.Errorf(apierr.ReasonInvalidWatchID, "watch_id %q is not one latchkey hands out", in.WatchId)
	}
	route := s.route.Load()
	// The feeds that must answer: the ones the client says it follows, or
	// (a client that does not say) every shard a watch covers now.
	expect := map[string]bool{}
	for _, id := range route.watch {
		expect[id] = true
	}
	if len(in.Shards) > 0 {
		expect = map[string]bool{}
		for _, id := range in.Shards {
			expect[id] = true
		}
	}
	got := s.control(ctx, in.WatchId, subjects.WatchOpKeepalive, in, expect)
	var missing, resharded []string
	for _, id := range slices.Sorted(maps.Keys(expect)) {
		if got[id] {
			continue
		}
		missing = append(missing, id)
		if route.added[id] {
			resharded = append(resharded, id)
		}
	}
	switch {
	case len(missing) > 0 && len(in.Shards) == 0 && len(resharded) == len(missing):
		// The watch started before a move added these shards: it must
		// cover them now. A resume starts them from their stream's start.
		return nil, apierr.Errorf(apierr.ReasonWatchResharded,
			"watch %s does not cover shard(s) %s, which a change of the shard set added: resume from your cursors (the new shards start from their stream's start)",
			in.WatchId, strings.Join(resharded, ","))
	case len(missing) > 0:
		return nil, apierr.Errorf(apierr.ReasonWatchGone,
			"watch %s is gone on shard(s) %s (cancelled, timed out, or its storage instance stopped): resume from your cursors",
			in.WatchId, strings.Join(missing, ","))
	}
	out := &pb.WatchKeepaliveResponse{}
	if len(in.Shards) > 0 {
		out.Shards = route.watch
		for _, id := range in.Shards {
			if !route.removed[id] {
				continue
			}
			if pos, err := s.drainPoint(ctx, route, id); err == nil {
				if out.DrainTo == nil {
					out.DrainTo = map[string]uint64{}
				}
				out.DrainTo[id] = pos
			}
		}
	}
	return out, nil
}

// drainPoint is a position of removed shard id's stream past which its
// feeds carry no event: once a move took a shard out of what watches
// cover, every key it had is handed over (a moved marker) and nothing can
// be written there any more, so its stream's last sequence, read once
// after that, is such a point. It is cached per routing (map version).
func (s *Server) drainPoint(ctx context.Context, route *routing, id string) (uint64, error) {
	d := route.drains
	d.mu.Lock()
	pos, ok := d.pos[id]
	d.mu.Unlock()
	if ok {
		return pos, nil
	}
	st, err := s.js.Stream(ctx, "KV_"+s.subj.ShardBucket(id))
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		pos = 0
	case err != nil:
		return 0, err
	default:
		pos = st.CachedInfo().State.LastSeq
	}
	d.mu.Lock()
	d.pos[id] = pos
	d.mu.Unlock()
	return pos, nil
}

// drainCache holds the drain points of one routing's removed shards.
type drainCache struct {
	mu  sync.Mutex
	pos map[string]uint64
}

func (s *Server) watchCancel(ctx context.Context, r *service.Request) (proto.Message, error) {
	in := &pb.WatchCancelRequest{}
	if err := r.Decode(in); err != nil {
		return nil, err
	}
	if !watchspec.ValidWatchID(in.WatchId) {
		return nil, apierr.Errorf(apierr.ReasonInvalidWatchID, "watch_id %q is not one latchkey hands out", in.WatchId)
	}
	want := map[string]bool{}
	for _, id := range s.route.Load().watch {
		want[id] = true
	}
	if len(in.Shards) > 0 {
		want = map[string]bool{}
		for _, id := range in.Shards {
			want[id] = true
		}
	}
	s.control(ctx, in.WatchId, subjects.WatchOpCancel, in, want)
	return &pb.WatchCancelResponse{}, nil
}

// control sends a keepalive or cancel to the watch's control subject and
// collects the shards named by the instances that answer, until every
// shard of want answered or controlWait (or ctx) ran out. An empty want
// sends without waiting.
func (s *Server) control(ctx context.Context, id, op string, m proto.Message, want map[string]bool) map[string]bool {
	data, _ := proto.Marshal(m)
	subject := s.subj.WatchControl(id, op)
	got := map[string]bool{}
	if len(want) == 0 {
		_ = s.nc.Publish(subject, data)
		return got
	}
	inbox := s.nc.NewRespInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := s.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return got
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := s.nc.PublishRequest(subject, inbox, data); err != nil {
		return got
	}
	t := time.NewTimer(controlWait)
	defer t.Stop()
	pending := len(want)
	for pending > 0 {
		select {
		case msg := <-ch:
			resp := &pb.ShardWatchKeepaliveResponse{}
			if codec.Decode(msg.Data, false, resp) == nil {
				for _, sid := range resp.Shards {
					if want[sid] && !got[sid] {
						pending--
					}
					got[sid] = true
				}
			}
		case <-t.C:
			return got
		case <-ctx.Done():
			return got
		}
	}
	return got
}
