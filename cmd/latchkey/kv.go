package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode"

	"github.com/latchkey/latchkey/client"
)

// maxStdinValue bounds what `put KEY -` reads, far above any deployment's
// value limit, so a runaway pipe cannot exhaust memory; the server then
// refuses the oversized value with a sentence naming its limit.
const maxStdinValue = 64 << 20

// jsonEntry is the --json form of an entry: one object per line, value in
// base64 like the wire API's protojson.
type jsonEntry struct {
	Key      string `json:"key"`
	Value    []byte `json:"value"`
	Revision uint64 `json:"revision"`
}

func printJSON(v any) error { return newJSONEncoder(os.Stdout).Encode(v) }

// newJSONEncoder writes one object per line, keeping <, > and & as they are:
// keys are shown to people and jq, not embedded in HTML.
func newJSONEncoder(w io.Writer) *json.Encoder {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc
}

func getCmd(ctx context.Context, args []string) error {
	fs := newFlags("get", "get KEY [--stale] [--json] [--verbose]")
	stale := fs.Bool("stale", false, "allow a cheaper read that may miss the latest writes")
	asJSON := fs.Bool("json", false, `print {"key","value" (base64),"revision"} as one JSON line`)
	verbose := fs.Bool("verbose", false, "print the revision to stderr")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, "KEY"); err != nil {
		return err
	}
	c, done, err := dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	var opts []client.GetOption
	if *stale {
		opts = append(opts, client.Stale())
	}
	e, err := c.Get(ctx, pos[0], opts...)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(jsonEntry{Key: e.Key, Value: e.Value, Revision: e.Revision})
	}
	if *verbose {
		fmt.Fprintf(os.Stderr, "revision %d\n", e.Revision)
	}
	w := bufio.NewWriter(os.Stdout)
	w.Write(e.Value)
	w.WriteByte('\n')
	return w.Flush()
}

// writeFlags are the flags put and del share.
type writeFlags struct {
	ifRevision *uint64
	ifAbsent   bool
	fenceLock  string
	fenceToken uint64
	asJSON     bool
}

func (w *writeFlags) register(fs *flag.FlagSet, withAbsent bool) {
	fs.Func("if-revision", "write only if the key's current revision is `N` (compare-and-set)", func(s string) error {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return fmt.Errorf("not a revision number: %q", s)
		}
		w.ifRevision = &n
		return nil
	})
	if withAbsent {
		fs.BoolVar(&w.ifAbsent, "if-absent", false, "write only if the key does not exist")
	}
	fs.StringVar(&w.fenceLock, "fence-lock", "", "fence the write with this lock `name` (with --fence-token)")
	fs.Uint64Var(&w.fenceToken, "fence-token", 0, "fencing `token` returned when the lock was acquired")
	fs.BoolVar(&w.asJSON, "json", false, "print the result as one JSON line")
}

func (w *writeFlags) options() ([]client.WriteOption, error) {
	var opts []client.WriteOption
	switch {
	case w.ifRevision != nil && w.ifAbsent:
		return nil, usagef("--if-revision and --if-absent exclude each other")
	case w.ifRevision != nil:
		opts = append(opts, client.IfRevision(*w.ifRevision))
	case w.ifAbsent:
		opts = append(opts, client.IfAbsent())
	}
	if (w.fenceLock != "") != (w.fenceToken != 0) {
		return nil, usagef("--fence-lock and --fence-token go together")
	}
	if w.fenceLock != "" {
		opts = append(opts, client.WithFence(w.fenceLock, w.fenceToken))
	}
	return opts, nil
}

func putCmd(ctx context.Context, args []string) error {
	fs := newFlags("put", "put KEY VALUE [--ttl 10s] [--if-revision N | --if-absent] [--fence-lock L --fence-token T] [--json]\n\nVALUE - reads the value from stdin; write -- before a VALUE that starts with \"-\".\nPrints the new revision.")
	var wf writeFlags
	wf.register(fs, true)
	ttl := fs.Duration("ttl", 0, "remove the key after this long (at least 1s)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, "KEY", "VALUE"); err != nil {
		return err
	}
	opts, err := wf.options()
	if err != nil {
		return err
	}
	if *ttl != 0 {
		opts = append(opts, client.WithTTL(*ttl))
	}
	value := []byte(pos[1])
	if pos[1] == "-" {
		if value, err = io.ReadAll(io.LimitReader(os.Stdin, maxStdinValue)); err != nil {
			return fmt.Errorf("reading the value from stdin: %w", err)
		}
	}
	c, done, err := dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	rev, err := c.Put(ctx, pos[0], value, opts...)
	if err != nil {
		return err
	}
	if wf.asJSON {
		return printJSON(struct {
			Key      string `json:"key"`
			Revision uint64 `json:"revision"`
		}{pos[0], rev})
	}
	_, err = fmt.Println(rev)
	return err
}

func delCmd(ctx context.Context, args []string) error {
	fs := newFlags("del", "del KEY [--if-revision N] [--fence-lock L --fence-token T] [--json]\n\nPrints \"deleted REVISION\", or \"absent\" when there was no such key (exit code 0 either way).")
	var wf writeFlags
	wf.register(fs, false)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, "KEY"); err != nil {
		return err
	}
	opts, err := wf.options()
	if err != nil {
		return err
	}
	c, done, err := dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	deleted, rev, err := c.Delete(ctx, pos[0], opts...)
	if err != nil {
		return err
	}
	if wf.asJSON {
		return printJSON(struct {
			Key      string `json:"key"`
			Deleted  bool   `json:"deleted"`
			Revision uint64 `json:"revision"`
		}{pos[0], deleted, rev})
	}
	if !deleted {
		_, err = fmt.Println("absent")
		return err
	}
	_, err = fmt.Println("deleted", rev)
	return err
}

func scanCmd(ctx context.Context, args []string) error {
	fs := newFlags("scan", "scan [PREFIX] [--limit N] [--after KEY] [--all] [--json]\n\nPrints KEY<TAB>VALUE per line (each Go-quoted when it is not plain one-line text).\nWithout --all it prints one page and, if more keys follow, says so on stderr.")
	limit := fs.Int("limit", 0, "page size (default 100, at most 1000)")
	after := fs.String("after", "", "start after this key (exclusive)")
	all := fs.Bool("all", false, "fetch every page")
	asJSON := fs.Bool("json", false, `print {"key","value" (base64),"revision"} per line`)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return wantArgs(fs, pos, "PREFIX")
	}
	prefix := ""
	if len(pos) == 1 {
		prefix = pos[0]
	}
	var opts []client.ScanOption
	if *limit != 0 {
		opts = append(opts, client.Limit(*limit))
	}
	if *after != "" {
		opts = append(opts, client.After(*after))
	}
	c, done, err := dial(ctx)
	if err != nil {
		return err
	}
	defer done()
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	enc := newJSONEncoder(w)
	emit := func(e client.Entry) error {
		if *asJSON {
			return enc.Encode(jsonEntry{Key: e.Key, Value: e.Value, Revision: e.Revision})
		}
		_, err := fmt.Fprintf(w, "%s\t%s\n", displayText(e.Key), displayText(string(e.Value)))
		return err
	}
	if *all {
		for e, err := range c.ScanAll(ctx, prefix, opts...) {
			if err != nil {
				return err
			}
			if err := emit(e); err != nil {
				return err
			}
		}
		return w.Flush()
	}
	page, err := c.Scan(ctx, prefix, opts...)
	if err != nil {
		return err
	}
	for _, e := range page.Items {
		if err := emit(e); err != nil {
			return err
		}
	}
	if page.More && len(page.Items) > 0 {
		fmt.Fprintf(os.Stderr, "more keys follow; continue with --after %s, or use --all\n",
			strconv.Quote(page.Items[len(page.Items)-1].Key))
	}
	return w.Flush()
}

// displayText shows text as is and anything that would break the
// one-line-per-key layout (newlines, tabs, control bytes, invalid UTF-8)
// Go-quoted.
func displayText(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == unicode.ReplacementChar }) < 0 {
		return s
	}
	return strconv.Quote(s)
}
