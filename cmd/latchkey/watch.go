package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/latchkey/latchkey/client"
	"github.com/nats-io/nats.go"
)

// jsonEvent is the --json form of a watch event, one object per line.
type jsonEvent struct {
	Type     string `json:"type"`
	Key      string `json:"key,omitempty"`
	Value    []byte `json:"value,omitempty"`
	Revision uint64 `json:"revision,omitempty"`
	Shard    string `json:"shard,omitempty"`
}

func watchCmd(ctx context.Context, args []string) error {
	fs := newFlags("watch", "watch PREFIX [--initial] [--key] [--json]")
	initial := fs.Bool("initial", false, "print every matching key's current value first, then an initial_done line")
	exact := fs.Bool("key", false, "watch exactly the key PREFIX, not every key starting with it")
	asJSON := fs.Bool("json", false, `print {"type","key","value" (base64),"revision","shard"} as one JSON line per event`)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usagef("watch takes one PREFIX (\"\" or none for every key)")
	}
	prefix := ""
	if len(pos) == 1 {
		prefix = pos[0]
	}
	// Unlike one-shot commands, a watch outlives server restarts: its
	// connection reconnects for ever and the client resumes the feed.
	nc, err := nats.Connect(global.server, nats.Name("latchkey-cli-watch"), nats.Timeout(global.timeout), nats.MaxReconnects(-1))
	if err != nil {
		return &unreachableError{server: global.server, err: err}
	}
	defer nc.Close()
	c := client.New(nc, client.WithPrefix(global.prefix), client.WithTimeout(global.timeout))
	var opts []client.WatchOption
	if *initial {
		opts = append(opts, client.WatchInitial())
	}
	if *exact {
		opts = append(opts, client.WatchKey())
	}
	w, err := c.Watch(ctx, prefix, opts...)
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	enc := newJSONEncoder(out)
	for ev := range w.Events() {
		if *asJSON {
			if err := enc.Encode(jsonEvent{Type: ev.Type.String(), Key: ev.Key, Value: ev.Value, Revision: ev.Revision, Shard: ev.Shard}); err != nil {
				return err
			}
		} else if ev.Type == client.EventInitialDone {
			fmt.Fprintln(out, "initial_done")
		} else {
			// One line per event: type, revision, key (quoted when it
			// would not read back as one word), then the value for puts.
			fmt.Fprintf(out, "%s %d %s", ev.Type, ev.Revision, shown(ev.Key))
			if ev.Type == client.EventPut {
				fmt.Fprintf(out, " %s", shown(string(ev.Value)))
			}
			fmt.Fprintln(out)
		}
		// Flush per event: a watch is read live (pipes, terminals).
		if err := out.Flush(); err != nil {
			return err
		}
	}
	if err := w.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// shown quotes s unless it is plain printable text without spaces.
func shown(s string) string {
	for _, r := range s {
		if r <= ' ' || r == '"' || r > '~' {
			return strconv.Quote(s)
		}
	}
	if s == "" {
		return `""`
	}
	return s
}
