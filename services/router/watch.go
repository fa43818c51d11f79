package router

import (
	"context"
	"errors"
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

// checkWatch applies the contract's rules to a watch request.
func checkWatch(in *pb.WatchRequest, shards []string) error {
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
	known := map[string]bool{}
	for _, id := range shards {
		known[id] = true
	}
	for id, c := range in.Cursors {
		if !known[id] {
			return apierr.Errorf(apierr.ReasonUnknownShard, "cursors name shard %q, which is not in the shard map %v", id, shards)
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
	shards := s.route.Load().hash.Shards()
	if err := checkWatch(in, shards); err != nil {
		return nil, err
	}
	id := nuid.Next()
	out := &pb.WatchResponse{WatchId: id, Cursors: map[string]string{}}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for _, sid := range shards {
		req := &pb.ShardWatchRequest{WatchId: id, Prefix: in.Prefix, Key: in.Key, Cursor: in.Cursors[sid],
			Initial: in.Initial, Deliver: in.Deliver, Json: r.JSON, CatchUpDone: in.CatchUpDone}
		wg.Go(func() {
			resp := &pb.ShardWatchResponse{}
			err := s.call(ctx, sid, watchspec.OpWatch, req, resp, nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
					cancel()
				}
				return
			}
			out.Cursors[sid] = resp.Cursor
		})
	}
	wg.Wait()
	if firstErr != nil {
		// Feeds that did start end now instead of at their keepalive
		// timeout.
		s.control(context.Background(), id, subjects.WatchOpCancel, &pb.WatchCancelRequest{WatchId: id}, 0)
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
	shards := s.route.Load().hash.Shards()
	got := s.control(ctx, in.WatchId, subjects.WatchOpKeepalive, in, len(shards))
	var missing []string
	for _, id := range shards {
		if !got[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return nil, apierr.Errorf(apierr.ReasonWatchGone,
			"watch %s is gone on shard(s) %s (cancelled, timed out, or its storage instance stopped): resume from your cursors",
			in.WatchId, strings.Join(missing, ","))
	}
	return &pb.WatchKeepaliveResponse{}, nil
}

func (s *Server) watchCancel(ctx context.Context, r *service.Request) (proto.Message, error) {
	in := &pb.WatchCancelRequest{}
	if err := r.Decode(in); err != nil {
		return nil, err
	}
	if !watchspec.ValidWatchID(in.WatchId) {
		return nil, apierr.Errorf(apierr.ReasonInvalidWatchID, "watch_id %q is not one latchkey hands out", in.WatchId)
	}
	s.control(ctx, in.WatchId, subjects.WatchOpCancel, in, len(s.route.Load().hash.Shards()))
	return &pb.WatchCancelResponse{}, nil
}

// control sends a keepalive or cancel to the watch's control subject and
// collects the shards named by the instances that answer, until want
// shards answered or controlWait (or ctx) ran out. want 0 sends without
// waiting.
func (s *Server) control(ctx context.Context, id, op string, m proto.Message, want int) map[string]bool {
	data, _ := proto.Marshal(m)
	subject := s.subj.WatchControl(id, op)
	got := map[string]bool{}
	if want == 0 {
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
	for len(got) < want {
		select {
		case msg := <-ch:
			resp := &pb.ShardWatchKeepaliveResponse{}
			if codec.Decode(msg.Data, false, resp) == nil {
				for _, sid := range resp.Shards {
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
