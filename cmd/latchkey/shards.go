package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Admin subjects (../shared/API.md, "Shards (administration)").
const (
	adminShardsGet   = "admin.shards.get"
	adminShardsSet   = "admin.shards.set"
	adminShardsAbort = "admin.shards.abort"
)

// shardsCmd shows or changes the shard set. The move itself is driven by
// the routers (their mover), not by this process: closing the terminal
// during `set --wait` stops only the progress display.
func shardsCmd(ctx context.Context, args []string) error {
	fs := newFlags("shards", "shards [--json] | shards set ID,ID,... [--wait] [--json] | shards abort [--json]")
	asJSON := fs.Bool("json", false, "print the answer as protojson")
	wait := fs.Bool("wait", false, "set: wait until the move is done, showing keys moved, rate and ETA on stderr")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	c, done, err := dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	subj := subjects.New(global.prefix)
	call := func(endpoint string, req, resp proto.Message) error {
		cctx, cancel := context.WithTimeout(ctx, global.timeout)
		defer cancel()
		return service.Call(cctx, c.Conn(), subj.Public(endpoint), nil, req, resp)
	}
	get := func() (*pb.ShardsGetResponse, error) {
		resp := &pb.ShardsGetResponse{}
		return resp, call(adminShardsGet, &pb.ShardsGetRequest{}, resp)
	}
	switch {
	case len(pos) == 0:
		cur, err := get()
		if err != nil {
			return err
		}
		return printShards(cur, *asJSON)
	case pos[0] == "set":
		if len(pos) != 2 {
			return usagef("shards set takes one argument, the new set: e.g. `latchkey shards set 0,1,2,3`")
		}
		ids := strings.Split(pos[1], ",")
		cur, err := get()
		if err != nil {
			return err
		}
		resp := &pb.ShardsSetResponse{}
		if err := call(adminShardsSet, &pb.ShardsSetRequest{Shards: ids, ExpectedEpoch: cur.Epoch}, resp); err != nil {
			return err
		}
		if !*wait {
			if *asJSON {
				return printProto(resp)
			}
			fmt.Printf("moving to %s (epoch %d), about %d keys to move; `latchkey shards` shows progress\n", pos[1], resp.Epoch, resp.KeysToMove)
			return nil
		}
		final, err := waitMove(ctx, get, resp.Epoch, !*asJSON)
		if err != nil {
			return err
		}
		return printShards(final, *asJSON)
	case pos[0] == "abort":
		cur, err := get()
		if err != nil {
			return err
		}
		if err := call(adminShardsAbort, &pb.ShardsAbortRequest{ExpectedEpoch: cur.Epoch}, &pb.ShardsAbortResponse{}); err != nil {
			return err
		}
		after, err := get()
		if err != nil {
			return err
		}
		return printShards(after, *asJSON)
	}
	return usagef("unknown shards subcommand %q: use set or abort", pos[0])
}

// waitMove polls until the map reaches epoch with its move done, drawing
// a progress line on stderr when show is set.
func waitMove(ctx context.Context, get func() (*pb.ShardsGetResponse, error), epoch uint64, show bool) (*pb.ShardsGetResponse, error) {
	start := time.Now()
	var firstMoved uint64
	first := true
	for {
		cur, err := get()
		if err == nil {
			mo := cur.Move
			if first {
				firstMoved, first = mo.GetKeysMoved(), false
			}
			if show {
				fmt.Fprint(os.Stderr, "\r"+progressLine(mo, firstMoved, time.Since(start)))
			}
			switch {
			case cur.Epoch >= epoch && mo.GetState() == pb.MoveState_MOVE_STATE_DONE && settled(mo):
				if show {
					fmt.Fprintln(os.Stderr)
				}
				return cur, nil
			case mo.GetState() == pb.MoveState_MOVE_STATE_ABORTED || mo.GetState() == pb.MoveState_MOVE_STATE_FAILED:
				if show {
					fmt.Fprintln(os.Stderr)
				}
				return cur, fmt.Errorf("the move ended %s %s", strings.TrimPrefix(mo.GetState().String(), "MOVE_STATE_"), mo.GetReason())
			}
		} else if !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil && show {
			fmt.Fprintf(os.Stderr, "\r(%v; retrying)", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// settled reports a done move that has nothing left to do: the shards it
// removed (if any) are retired.
func settled(mo *pb.ShardMove) bool {
	if mo.GetRetired() {
		return true
	}
	for _, id := range mo.GetFromShards() {
		if !slices.Contains(mo.GetToShards(), id) {
			return false
		}
	}
	return true
}

// progressLine is "state  moved/total keys (pct)  rate keys/s  ETA".
func progressLine(mo *pb.ShardMove, firstMoved uint64, elapsed time.Duration) string {
	moved, total := mo.GetKeysMoved(), mo.GetKeysTotal()
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 && moved > firstMoved {
		rate = float64(moved-firstMoved) / s
	}
	pct, eta := "", "ETA -"
	if total > 0 {
		pct = fmt.Sprintf(" (%d%%)", min(100, moved*100/total))
		if rate > 0 && total > moved {
			eta = "ETA " + (time.Duration(float64(total-moved)/rate) * time.Second).Round(time.Second).String()
		}
	}
	const width = 24
	filled := width
	if total > 0 {
		filled = int(min(moved, total) * width / total)
	}
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	state := strings.TrimPrefix(mo.GetState().String(), "MOVE_STATE_")
	if mo.GetState() == pb.MoveState_MOVE_STATE_DONE && !settled(mo) {
		state = "RETIRING"
	}
	if r := mo.GetReason(); r != "" {
		state += " (" + r + ")"
	}
	return fmt.Sprintf("[%s] %s %d/%d keys%s  %.0f keys/s  %s   ", bar, state, moved, total, pct, rate, eta)
}

func printShards(cur *pb.ShardsGetResponse, asJSON bool) error {
	if asJSON {
		return printProto(cur)
	}
	fmt.Printf("epoch %d: shards %s\n", cur.Epoch, strings.Join(cur.Shards, ","))
	if mo := cur.Move; mo != nil {
		state := strings.TrimPrefix(mo.State.String(), "MOVE_STATE_")
		if mo.Reason != "" {
			state += " (" + mo.Reason + ")"
		}
		fmt.Printf("last move: %s -> %s from epoch %d: %s, %d of about %d keys moved\n",
			strings.Join(mo.FromShards, ","), strings.Join(mo.ToShards, ","), mo.FromEpoch, state, mo.KeysMoved, mo.KeysTotal)
		if mo.FreezeMaxUs > 0 {
			fmt.Printf("keys unavailable while handed over: p99 %v, longest %v\n",
				time.Duration(mo.FreezeP99Us)*time.Microsecond, time.Duration(mo.FreezeMaxUs)*time.Microsecond)
		}
	}
	return nil
}

func printProto(m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Println(string(b))
	return err
}
