package router

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/service"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Admin subjects (../shared/API.md, "Shards (administration)"), under the
// deployment's prefix.
const (
	AdminShardsGet   = "admin.shards.get"
	AdminShardsSet   = "admin.shards.set"
	AdminShardsAbort = "admin.shards.abort"
)

// adminShardID: decimal numbers 0-9999 written as strings, no leading zeros.
var adminShardID = regexp.MustCompile(`^(0|[1-9][0-9]{0,3})$`)

// maxAdminShards bounds a set: the hash table stores shard indexes in 16
// bits, and building it costs about 1.5 ns per bucket and shard.
const maxAdminShards = 1024

func (s *Server) adminEndpoints() []service.Endpoint {
	ep := func(name, public string, f service.Func) service.Endpoint {
		return service.Endpoint{Name: name, Subject: s.subj.Public(public), Func: f}
	}
	return []service.Endpoint{
		ep("admin-shards-get", AdminShardsGet, s.adminGet),
		ep("admin-shards-set", AdminShardsSet, s.adminSet),
		ep("admin-shards-abort", AdminShardsAbort, s.adminAbort),
	}
}

func (s *Server) adminGet(ctx context.Context, r *service.Request) (proto.Message, error) {
	if err := r.Decode(&pb.ShardsGetRequest{}); err != nil {
		return nil, err
	}
	m, _, err := readMap(ctx, s.kv)
	if err != nil {
		return nil, apierr.Unavailable(apierr.ReasonJetStreamRead, "%v", err)
	}
	if m == nil {
		return nil, apierr.Unavailable(apierr.ReasonJetStreamRead, "the deployment has no shard map yet")
	}
	return &pb.ShardsGetResponse{Epoch: m.Epoch, Shards: m.Shards, Move: m.Move}, nil
}

func (s *Server) adminSet(ctx context.Context, r *service.Request) (proto.Message, error) {
	in := &pb.ShardsSetRequest{}
	if err := r.Decode(in); err != nil {
		return nil, err
	}
	if len(in.Shards) == 0 {
		return nil, apierr.Invalid(apierr.ReasonMalformedBody, "shards is empty: a deployment needs at least one shard")
	}
	if len(in.Shards) > maxAdminShards {
		return nil, apierr.Invalid(apierr.ReasonMalformedBody, "%d shards: at most %d", len(in.Shards), maxAdminShards)
	}
	seen := map[string]bool{}
	for _, id := range in.Shards {
		if !adminShardID.MatchString(id) {
			return nil, apierr.Invalid(apierr.ReasonMalformedBody, "shard id %q: ids are decimal numbers 0-9999 without leading zeros", id)
		}
		if seen[id] {
			return nil, apierr.Invalid(apierr.ReasonMalformedBody, "shard id %q is listed twice", id)
		}
		seen[id] = true
	}
	if in.ExpectedEpoch == 0 {
		return nil, apierr.Invalid(apierr.ReasonMalformedBody, "expected_epoch is required (read it with %s)", AdminShardsGet)
	}
	to := slices.Sorted(slices.Values(in.Shards))
	for range 10 {
		m, rev, err := readMap(ctx, s.kv)
		if err != nil || m == nil {
			return nil, apierr.Unavailable(apierr.ReasonJetStreamRead, "cannot read the shard map: %v", err)
		}
		if running(m.Move) {
			return nil, apierr.Conflict(apierr.ReasonMoveRunning, "a move to %v (epoch %d) is running; wait for it or abort it", m.Move.ToShards, m.Epoch+1)
		}
		if m.Epoch != in.ExpectedEpoch {
			return nil, apierr.Conflict(apierr.ReasonEpochMismatch, "the shard map is at epoch %d, not %d: read it again", m.Epoch, in.ExpectedEpoch)
		}
		if unfinished(m.Move) {
			return nil, apierr.Conflict(apierr.ReasonMoveRunning,
				"the aborted move to %v is still moving its keys back; retry when shards get shows it returned", m.Move.ToShards)
		}
		if retiring(m.Move) {
			return nil, apierr.Conflict(apierr.ReasonMoveRunning,
				"the move to %v is retiring the streams of the shards it removed (%v); retry in a moment", m.Move.ToShards, removedShards(m.Move))
		}
		if sameSet(m.Shards, to) {
			return &pb.ShardsSetResponse{Epoch: m.Epoch}, nil
		}
		est := estimateMove(ctx, s.js, s.subj, m.Shards, to)
		now := time.Now().UnixMilli()
		m.Move = &pb.ShardMove{FromEpoch: m.Epoch, FromShards: m.Shards, ToShards: to, State: pb.MoveState_MOVE_STATE_COPYING,
			KeysTotal: est, StartedUnixMs: now, UpdatedUnixMs: now}
		data, _ := proto.Marshal(m)
		if _, err := s.kv.Update(ctx, shardMapKey, data, rev); err != nil {
			if isCASConflict(err) {
				continue
			}
			return nil, apierr.Unavailable(apierr.ReasonJetStreamWrite, "cannot write the shard map: %v", err)
		}
		s.apply(m)
		s.log.Info("move started", "from", m.Shards, "to", to, "epoch", m.Epoch+1, "keys_to_move", est)
		return &pb.ShardsSetResponse{Epoch: m.Epoch + 1, KeysToMove: est}, nil
	}
	return nil, apierr.Unavailable(apierr.ReasonContention, "the shard map kept changing; retry")
}

// unfinished reports an aborted move whose keys are not all back on their
// old shards yet (the mover's giveBack); until they are, routers follow
// the keys' moved markers to the move's shards.
func unfinished(mo *pb.ShardMove) bool {
	return mo != nil && mo.State == pb.MoveState_MOVE_STATE_ABORTED && !mo.Returned
}

func (s *Server) adminAbort(ctx context.Context, r *service.Request) (proto.Message, error) {
	in := &pb.ShardsAbortRequest{}
	if err := r.Decode(in); err != nil {
		return nil, err
	}
	for range 10 {
		m, rev, err := readMap(ctx, s.kv)
		if err != nil || m == nil {
			return nil, apierr.Unavailable(apierr.ReasonJetStreamRead, "cannot read the shard map: %v", err)
		}
		if m.Epoch != in.ExpectedEpoch {
			return nil, apierr.Conflict(apierr.ReasonEpochMismatch, "the shard map is at epoch %d, not %d: read it again", m.Epoch, in.ExpectedEpoch)
		}
		if !running(m.Move) {
			return &pb.ShardsAbortResponse{}, nil
		}
		m.Move.State = pb.MoveState_MOVE_STATE_ABORTED
		m.Move.UpdatedUnixMs = time.Now().UnixMilli()
		data, _ := proto.Marshal(m)
		if _, err := s.kv.Update(ctx, shardMapKey, data, rev); err != nil {
			if isCASConflict(err) {
				continue
			}
			return nil, apierr.Unavailable(apierr.ReasonJetStreamWrite, "cannot write the shard map: %v", err)
		}
		s.apply(m)
		return &pb.ShardsAbortResponse{}, nil
	}
	return nil, apierr.Unavailable(apierr.ReasonContention, "the shard map kept changing; retry")
}

func isCASConflict(err error) bool {
	var ae *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		(errors.As(err, &ae) && (ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant))
}
