package bench

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Machine describes where a report was measured.
type Machine struct {
	CPUs     int    `json:"cpus"`
	CPUModel string `json:"cpu_model"`
	GoOS     string `json:"goos"`
	GoArch   string `json:"goarch"`
	Go       string `json:"go"`
	LoadAvg  string `json:"loadavg,omitempty"` // /proc/loadavg at the start
	Started  string `json:"started"`
}

// ThisMachine reads the CPU model and load from /proc where it exists.
func ThisMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoOS: runtime.GOOS, GoArch: runtime.GOARCH, Go: runtime.Version(),
		Started: time.Now().UTC().Format(time.RFC3339)}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAvg = strings.TrimSpace(string(b))
	}
	return m
}

// Targets are the figures issue 6 asks latchkey to reach, as ratios to
// floors (ops/s over the floor's ops/s).
var Targets = map[string]float64{WGet: 0.7, WGetStale: 0.8, WPut: 0.7, WLock: 0.7}

// HandoffTarget is the lock handoff p50 latchkey must stay under.
const HandoffTarget = 2 * time.Millisecond

func us(d time.Duration) string {
	if d >= 10*time.Millisecond {
		return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(float64(d)/1e3, 'f', 0, 64) + "us"
}

// WriteTable prints the results as aligned text: one row per system,
// workload and concurrency, with ratios to floors, then the target check.
func (r *Report) WriteTable(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "machine: %d CPUs, %s, %s/%s, %s, load %s\n", m.CPUs, m.CPUModel, m.GoOS, m.GoArch, m.Go, m.LoadAvg)
	durs := map[string]int{}
	var order []string
	for _, x := range r.Results {
		if _, ok := durs[x.Durability]; !ok {
			durs[x.Durability] = len(order) + 1
			order = append(order, x.Durability)
		}
	}
	fmt.Fprintln(w, "durability:")
	for i, d := range order {
		fmt.Fprintf(w, "  [%d] %s\n", i+1, d)
	}
	// The etcd column appears only when the report pairs latchkey with
	// etcd at equal durability and topology (a cluster run with --peers).
	etcdCol := slices.ContainsFunc(r.Results, func(x Result) bool { return x.EtcdRatio > 0 })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "system\tdur\tworkload\tclients\tops/s\tp50\tp99\tp999\terrors\tcpu/op\tcores\tfloor\tratio\tcpu ratio\t"
	if etcdCol {
		head += EtcdRatioLabel + "\t"
	}
	fmt.Fprintln(tw, head)
	for _, x := range r.Results {
		ratio, cpuRatio := "", ""
		if x.Floor != "" {
			ratio = fmt.Sprintf("%.2fx", x.Ratio)
			if x.CPURatio > 0 {
				cpuRatio = fmt.Sprintf("%.2fx", x.CPURatio)
			}
		}
		fmt.Fprintf(tw, "%s\t[%d]\t%s\t%d\t%.0f\t%s\t%s\t%s\t%d\t%s\t%.2f\t%s\t%s\t%s\t", x.System, durs[x.Durability], x.Workload, x.Clients,
			x.OpsPerSec, us(x.P50), us(x.P99), us(x.P999), x.Errors, us(x.CPUPerOp), x.Cores, x.Floor, ratio, cpuRatio)
		if etcdCol {
			er := ""
			if x.EtcdRatio > 0 {
				er = fmt.Sprintf("%.2fx", x.EtcdRatio)
			}
			fmt.Fprintf(tw, "%s\t", er)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	for _, x := range r.Results {
		if x.FirstError != "" {
			fmt.Fprintf(w, "first error of %s %s c=%d: %s\n", x.System, x.Workload, x.Clients, x.FirstError)
		}
	}
	if lines := r.TargetCheck(); len(lines) > 0 {
		fmt.Fprintln(w, "targets (issue 6):")
		for _, l := range lines {
			fmt.Fprintln(w, "  "+l)
		}
	}
	if lines := r.EtcdCheck(); len(lines) > 0 {
		fmt.Fprintf(w, "%s (issue 15, target >= %.1fx; handoff: etcd p50 / latchkey p50):\n", EtcdRatioLabel, EtcdTarget)
		for _, l := range lines {
			fmt.Fprintln(w, "  "+l)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note: "+n)
	}
}

// EtcdRatioLabel names Result.EtcdRatio in the table.
const EtcdRatioLabel = "latchkey / etcd at equal durability and topology"

// EtcdTarget is issue 15's target for Result.EtcdRatio, every workload.
const EtcdTarget = 1.5

// EtcdCheck is one line per latchkey result paired with etcd at equal
// durability and topology: the ratio against EtcdTarget.
func (r *Report) EtcdCheck() []string {
	var out []string
	for _, x := range r.Results {
		if x.System != "latchkey" || x.EtcdRatio <= 0 {
			continue
		}
		mark := "MISSED"
		if x.EtcdRatio >= EtcdTarget {
			mark = "met   "
		}
		out = append(out, fmt.Sprintf("%s %-14s c=%-3d %.2fx [%s vs %s]", mark, x.Workload, x.Clients, x.EtcdRatio, short(x.Durability), short(EqualEtcd[x.Durability])))
	}
	return out
}

// TargetCheck compares the latchkey results with the targets: ratios to
// floors, handoff latency, and etcd at the same or a weaker durability.
func (r *Report) TargetCheck() []string {
	var out []string
	mark := func(ok bool) string {
		if ok {
			return "met   "
		}
		return "MISSED"
	}
	for _, x := range r.Results {
		if x.System != "latchkey" {
			continue
		}
		if t, ok := Targets[x.Workload]; ok && x.Floor != "" {
			out = append(out, fmt.Sprintf("%s %-10s c=%-3d %.2fx %s (target >= %.1fx) [%s]", mark(x.Ratio >= t), x.Workload, x.Clients, x.Ratio, x.Floor, t, short(x.Durability)))
		}
		if x.Workload == WHandoff {
			out = append(out, fmt.Sprintf("%s %-10s c=%-3d p50 %s (target < %s) [%s]", mark(x.P50 < HandoffTarget), x.Workload, x.Clients, us(x.P50), us(HandoffTarget), short(x.Durability)))
		}
		if x.Durability != DurabilityJSAlways {
			continue // etcd fsyncs: compare like with like
		}
		for _, e := range r.Results {
			if e.System == "etcd" && e.Workload == x.Workload && e.Clients == x.Clients {
				better := x.OpsPerSec >= e.OpsPerSec
				if x.Workload == WHandoff {
					better = x.P50 <= e.P50
				}
				out = append(out, fmt.Sprintf("%s %-10s c=%-3d latchkey %.0f/s p50 %s vs etcd %.0f/s p50 %s (both fsync)", mark(better), x.Workload, x.Clients, x.OpsPerSec, us(x.P50), e.OpsPerSec, us(e.P50)))
			}
		}
	}
	return out
}

func short(d string) string {
	switch d {
	case DurabilityJSDefault:
		return "sync default"
	case DurabilityJSAlways:
		return "sync always"
	case DurabilityJSClusterDefault:
		return "R3 sync default"
	case DurabilityJSClusterAlways:
		return "R3 sync always"
	case DurabilityEtcdCluster:
		return "etcd 3 members"
	}
	return d
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteCSV writes one line per result, latencies in microseconds.
func (r *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"system", "durability", "workload", "clients", "value_size", "keys", "dist", "runs", "ops", "errors", "ops_per_sec", "p50_us", "p99_us", "p999_us", "mean_us", "max_us", "cpu_per_op_us", "cores", "floor", "ratio", "cpu_ratio"})
	f := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e3, 'f', 1, 64) }
	for _, x := range r.Results {
		_ = cw.Write([]string{x.System, x.Durability, x.Workload, strconv.Itoa(x.Clients), strconv.Itoa(x.ValueSize), strconv.Itoa(x.Keys), x.Dist,
			strconv.Itoa(x.Runs), strconv.FormatUint(x.Ops, 10), strconv.FormatUint(x.Errors, 10), strconv.FormatFloat(x.OpsPerSec, 'f', 0, 64),
			f(x.P50), f(x.P99), f(x.P999), f(x.Mean), f(x.Max), f(x.CPUPerOp), strconv.FormatFloat(x.Cores, 'f', 2, 64),
			x.Floor, strconv.FormatFloat(x.Ratio, 'f', 3, 64), strconv.FormatFloat(x.CPURatio, 'f', 3, 64)})
	}
	cw.Flush()
	return cw.Error()
}
