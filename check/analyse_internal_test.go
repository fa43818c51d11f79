package check

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/latchkey/latchkey/check/kvmodel"
)

// TestAnalyseHistory checks a history written by `latchkey check
// --history` key by key, with a generous budget per key, and writes a
// visualisation of each key that is not linearizable (or that porcupine
// gave up on). It is a tool for reading a failed run, not a CI test:
// LATCHKEY_HISTORY=h.jsonl [LATCHKEY_NAMESPACE=latchkey-check/1/]
// [LATCHKEY_FAULTS=summary.txt] [LATCHKEY_UNTIL=60s]
// go test -run TestAnalyseHistory ./check/
func TestAnalyseHistory(t *testing.T) {
	path := os.Getenv("LATCHKEY_HISTORY")
	if path == "" {
		t.Skip("set LATCHKEY_HISTORY to a history file")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ops []Op
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		var op Op
		if err := json.Unmarshal(sc.Bytes(), &op); err != nil {
			t.Fatal(err)
		}
		ops = append(ops, op)
	}
	if v := os.Getenv("LATCHKEY_UNTIL"); v != "" {
		// Bisecting: only the operations invoked before this offset.
		until, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		ops = slices.DeleteFunc(ops, func(op Op) bool { return op.Call >= until })
	}
	// The faults, for the TTL model: LATCHKEY_FAULTS names the run's
	// printed summary, whose "faults (seed N):" lines give their times.
	var faults []FaultRecord
	if p := os.Getenv("LATCHKEY_FAULTS"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile(`(?m)^\s+([0-9.]+)s-\s*([0-9.]+)s (\S+) (\d+)`)
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			in, _ := strconv.ParseFloat(m[1], 64)
			out, _ := strconv.ParseFloat(m[2], 64)
			target, _ := strconv.Atoi(m[4])
			faults = append(faults, FaultRecord{Fault: Fault{Kind: m[3], Target: target},
				Injected: time.Duration(in * float64(time.Second)), Healed: time.Duration(out * float64(time.Second))})
		}
		t.Logf("%d faults from %s", len(faults), p)
	}
	ns := os.Getenv("LATCHKEY_NAMESPACE")
	cfg := Config{Namespace: ns, Keys: 16, Locks: 4, Clients: 8}
	r := &run{cfg: cfg}
	for i := range cfg.Keys {
		r.keys = append(r.keys, r.key(i))
	}
	split := func(h []porcupine.Operation) map[string][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range h {
			k := op.Input.(kvmodel.Input).Key
			byKey[k] = append(byKey[k], op)
		}
		return byKey
	}
	pruned, bounded, byKey := split(r.history(ops, faults, histPrune)), split(r.history(ops, faults, histBound)), split(r.history(ops, faults, histFull))
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	model := kvmodel.Model()
	for _, k := range keys {
		began := time.Now()
		if only := os.Getenv("LATCHKEY_KEY"); only != "" && !strings.HasSuffix(k, only) {
			continue
		}
		pres := porcupine.CheckOperationsTimeout(model, pruned[k], time.Minute)
		if pres == porcupine.Ok {
			t.Logf("%s: Ok without unobserved unknown writes (%d of %d ops, %s)", k, len(pruned[k]), len(byKey[k]), time.Since(began).Round(time.Millisecond))
			continue
		}
		t.Logf("%s: without unobserved unknown writes: %s (%s)", k, pres, time.Since(began).Round(time.Millisecond))
		if bres := porcupine.CheckOperationsTimeout(model, bounded[k], time.Minute); bres == porcupine.Ok {
			t.Logf("%s: Ok with unknown writes bounded (%s)", k, time.Since(began).Round(time.Millisecond))
			continue
		} else {
			t.Logf("%s: with unknown writes bounded: %s (%s)", k, bres, time.Since(began).Round(time.Millisecond))
		}
		res, info := porcupine.CheckOperationsVerbose(model, byKey[k], time.Minute)
		unknown := 0
		for _, op := range byKey[k] {
			if op.Output.(kvmodel.Output).Unknown {
				unknown++
			}
		}
		t.Logf("%s: %s (%d ops, %d unknown writes, %s)", k, res, len(byKey[k]), unknown, time.Since(began).Round(time.Millisecond))
		if res != porcupine.Ok {
			out := filepath.Join(os.TempDir(), fmt.Sprintf("analyse-%s.html", strings.ReplaceAll(k, "/", "_")))
			if err := porcupine.VisualizePath(model, info, out); err == nil {
				t.Logf("  visualisation: %s", out)
			}
		}
	}
}
