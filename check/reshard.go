package check

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/proto"
)

// KindReshard is the fault a Resharder injects: a move of the shard set
// (../shared/API.md, "Shards (administration)") while traffic runs.
const KindReshard = "reshard"

// AdminCall sends one request to a latchkey.admin.shards endpoint
// ("get", "set", "abort") with the caller's credentials.
type AdminCall func(ctx context.Context, endpoint string, req, resp proto.Message) error

// Resharder is an Injector whose one fault moves the deployment between
// two shard sets: injecting it starts a move to the set not in force,
// healing it waits until that move is done. Every check of the run then
// judges the traffic that raced the move: no acknowledged write lost,
// gets linearizable, revisions that never go back, fences and TTLs that
// travel with their keys. Storage must serve the ids of both sets.
type Resharder struct {
	call AdminCall
	sets [2][]string
}

// NewResharder moves between the set in force now and that set plus one
// more id (the highest plus one), or between the two sets given.
func NewResharder(ctx context.Context, call AdminCall, sets ...[]string) (*Resharder, error) {
	r := &Resharder{call: call}
	if len(sets) == 2 {
		r.sets = [2][]string{slices.Sorted(slices.Values(sets[0])), slices.Sorted(slices.Values(sets[1]))}
		return r, nil
	}
	cur, err := r.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("reshard: reading the shard set: %w", err)
	}
	if running(cur.Move) {
		return nil, fmt.Errorf("reshard: a move to %v is running; wait for it or abort it (latchkey shards abort)", cur.Move.ToShards)
	}
	top := -1
	for _, id := range cur.Shards {
		if n, err := strconv.Atoi(id); err == nil && n > top {
			top = n
		}
	}
	grown := append(slices.Clone(cur.Shards), strconv.Itoa(top+1))
	r.sets = [2][]string{slices.Sorted(slices.Values(cur.Shards)), slices.Sorted(slices.Values(grown))}
	return r, nil
}

// Sets are the two shard sets the resharder moves between.
func (r *Resharder) Sets() [2][]string { return r.sets }

// Faults lists the one fault, held at least long enough for a move to
// get under way.
func (r *Resharder) Faults() []Fault {
	return []Fault{{Kind: KindReshard, MinHold: 2 * time.Second, MaxHold: 4 * time.Second}}
}

// Inject starts a move to whichever set is not in force.
func (r *Resharder) Inject(ctx context.Context, f Fault) error {
	cur, err := r.get(ctx)
	if err != nil {
		return err
	}
	if running(cur.Move) {
		return fmt.Errorf("reshard: a move to %v is still running", cur.Move.ToShards)
	}
	to := r.sets[1]
	if slices.Equal(slices.Sorted(slices.Values(cur.Shards)), r.sets[1]) {
		to = r.sets[0]
	}
	resp := &pb.ShardsSetResponse{}
	if err := r.call(ctx, "set", &pb.ShardsSetRequest{Shards: to, ExpectedEpoch: cur.Epoch}, resp); err != nil {
		return fmt.Errorf("reshard: set %v at epoch %d: %w", to, cur.Epoch, err)
	}
	return nil
}

// Heal waits for the move to end; a move that failed or was aborted is
// an error (the fault was not carried out as planned).
func (r *Resharder) Heal(ctx context.Context, f Fault) error {
	for {
		cur, err := r.get(ctx)
		switch {
		case err == nil && !running(cur.Move):
			if st := cur.Move.GetState(); st != pb.MoveState_MOVE_STATE_DONE && st != pb.MoveState_MOVE_STATE_UNSPECIFIED {
				return fmt.Errorf("reshard: the move to %v ended %v: %s", cur.Move.GetToShards(), st, cur.Move.GetReason())
			}
			return nil
		case err != nil && !errors.Is(err, apierr.ErrUnavailable):
			return fmt.Errorf("reshard: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("reshard: the move did not end in time: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (r *Resharder) get(ctx context.Context) (*pb.ShardsGetResponse, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp := &pb.ShardsGetResponse{}
	return resp, r.call(cctx, "get", &pb.ShardsGetRequest{}, resp)
}

func running(m *pb.ShardMove) bool {
	st := m.GetState()
	return st == pb.MoveState_MOVE_STATE_COPYING || st == pb.MoveState_MOVE_STATE_HANDOVER
}

// Combine is one Injector over several: each fault goes to the injector
// that listed it.
func Combine(injectors ...Injector) Injector { return combined(injectors) }

type combined []Injector

func (c combined) Faults() []Fault {
	var out []Fault
	for _, in := range c {
		out = append(out, in.Faults()...)
	}
	return out
}

func (c combined) owner(f Fault) (Injector, error) {
	for _, in := range c {
		for _, g := range in.Faults() {
			if g.Kind == f.Kind && g.Target == f.Target {
				return in, nil
			}
		}
	}
	return nil, fmt.Errorf("no injector causes %s", f)
}

func (c combined) Inject(ctx context.Context, f Fault) error {
	in, err := c.owner(f)
	if err != nil {
		return err
	}
	return in.Inject(ctx, f)
}

func (c combined) Heal(ctx context.Context, f Fault) error {
	in, err := c.owner(f)
	if err != nil {
		return err
	}
	return in.Heal(ctx, f)
}
