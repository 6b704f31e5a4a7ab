// heartbeatload renews a fleet's leases through meshplane's registry gRPC API the way the devices
// do: one unary Heartbeat per device per period, spread evenly over the period, open loop (each call
// starts at its due time whatever is still in flight, so a slow server shows as latency instead of
// slowing the load down). It exists because one Python asyncio client cannot start 3,333 unary
// calls a second on two cores; this one does so with little CPU, so the server's figures are the
// server's.
//
//	heartbeatload -targets 127.0.0.1:18001,127.0.0.1:18011 -devices FILE -token T [-period 30s]
//	              [-rounds 1] [-connections 8] [-timeout 10s]
//
// FILE has one line per device, `device_id<TAB>lease_id`. Device i (line order) goes to target
// i % len(targets), over connection (i / len(targets)) % connections of it, and in round r is due
// at start + r*period + i*period/N. Latency is answer time - due time (a late start counts); the
// schedule lag (send time - due time) shows whether the generator itself kept pace.
//
// Prints one JSON object at the end (see report). Exits 0 even when calls failed (they are counted
// under "failed"); non-zero for usage errors or connections that never became READY.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const method = "/meshplane.edge.v1.Registry/Heartbeat"

// How long the connections get to become READY before the run is refused.
const readyWait = 30 * time.Second

// rawCodec sends pre-encoded request bytes and ignores the response's: there is no protoc Go
// codegen here, the request is two string fields, and only the answer's arrival time matters.
// Its name makes the content-type application/grpc+proto, which every gRPC server takes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)   { return v.([]byte), nil }
func (rawCodec) Unmarshal(_ []byte, _ any) error { return nil }
func (rawCodec) Name() string                    { return "proto" }

// encodeRequest is HeartbeatRequest{device_id = 1; lease_id = 2} in the protobuf wire format: each
// field is its tag byte (field number << 3 | 2, length-delimited), a varint length, the bytes.
func encodeRequest(deviceID, leaseID string) []byte {
	out := make([]byte, 0, len(deviceID)+len(leaseID)+12)
	for i, value := range []string{deviceID, leaseID} {
		if value == "" {
			continue // proto3 leaves empty strings out
		}
		out = append(out, byte((i+1)<<3|2))
		for n := uint64(len(value)); ; n >>= 7 {
			if n < 0x80 {
				out = append(out, byte(n))
				break
			}
			out = append(out, byte(n)|0x80)
		}
		out = append(out, value...)
	}
	return out
}

// codeNames spells status codes as the proto and the Python client do (NOT_FOUND, not NotFound).
var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL",
	codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

func failure(err error) string {
	st := status.Convert(err)
	name, ok := codeNames[st.Code()]
	if !ok {
		name = st.Code().String()
	}
	msg := st.Message()
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return name + ": " + msg
}

// result is one call's outcome; each call's goroutine writes only its own slot, so no lock.
type result struct {
	target  int
	due     time.Duration // into the window
	lag     time.Duration // send - due
	latency time.Duration // answer - due
	failed  string        // "CODE: message", empty when the call succeeded
}

// ordered is a JSON object that keeps its keys in the order given (Go's maps sort theirs).
type ordered []field

type field struct {
	key   string
	value any
}

func (o *ordered) add(key string, value any) { *o = append(*o, field{key, value}) }

func (o ordered) MarshalJSON() ([]byte, error) {
	var b strings.Builder
	b.WriteByte('{')
	for i, kv := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(kv.key)
		v, err := json.Marshal(kv.value)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return []byte(b.String()), nil
}

func ms(d time.Duration) float64 { return math.Round(float64(d.Microseconds())) / 1000 }

// percentile is the nearest rank: the smallest value with at least p of the values at or below it.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return ms(sorted[max(0, min(i, len(sorted)-1))])
}

func sortedDurations(d []time.Duration) []time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d
}

func summary(latencies []time.Duration) ordered {
	s := sortedDurations(latencies)
	var o ordered
	o.add("count", len(s))
	for _, p := range []struct {
		name string
		p    float64
	}{{"p50_ms", 0.5}, {"p90_ms", 0.9}, {"p99_ms", 0.99}, {"max_ms", 1}} {
		o.add(p.name, percentile(s, p.p))
	}
	return o
}

func readDevices(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var requests [][]byte
	scanner := bufio.NewScanner(f)
	for line := 1; scanner.Scan(); line++ {
		id, lease, ok := strings.Cut(scanner.Text(), "\t")
		if !ok || id == "" || lease == "" {
			return nil, fmt.Errorf("%s:%d: want device_id<TAB>lease_id", path, line)
		}
		requests = append(requests, encodeRequest(id, lease))
	}
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	if len(requests) == 0 {
		return nil, fmt.Errorf("%s: no devices", path)
	}
	return requests, nil
}

// dial opens every connection at once, then waits until each is READY: the run's start must not
// include handshakes, and a target that never answers should stop the run rather than fail it call
// by call.
func dial(targets []string, perTarget int) ([][]*grpc.ClientConn, error) {
	conns := make([][]*grpc.ClientConn, len(targets))
	for t, target := range targets {
		for range perTarget {
			c, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", target, err)
			}
			c.Connect()
			conns[t] = append(conns[t], c)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyWait)
	defer cancel()
	for t, target := range targets {
		for _, c := range conns[t] {
			for s := c.GetState(); s != connectivity.Ready; s = c.GetState() {
				if s == connectivity.Idle {
					c.Connect() // a failed attempt can leave it idle
				}
				if !c.WaitForStateChange(ctx, s) {
					return nil, fmt.Errorf("%s: connection not READY after %s (last state %s)", target, readyWait, s)
				}
			}
		}
	}
	return conns, nil
}

func main() {
	targetList := flag.String("targets", "", "registry gRPC addresses, host:port,host:port,...")
	devicesPath := flag.String("devices", "", "file of device_id<TAB>lease_id lines")
	period := flag.Duration("period", 30*time.Second, "every device renews once per period")
	rounds := flag.Int("rounds", 1, "periods to run")
	perTarget := flag.Int("connections", 8, "gRPC connections per target")
	token := flag.String("token", "", "bearer token sent with every call")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of each call")
	flag.Parse()
	usage := func(msg string) {
		fmt.Fprintln(os.Stderr, "heartbeatload:", msg)
		os.Exit(2)
	}
	if flag.NArg() > 0 {
		usage("unexpected arguments: " + strings.Join(flag.Args(), " "))
	}
	if *targetList == "" || *devicesPath == "" || *token == "" {
		usage("-targets, -devices and -token are required")
	}
	if *period <= 0 || *rounds < 1 || *perTarget < 1 || *timeout <= 0 {
		usage("-period and -timeout must be positive, -rounds and -connections at least 1")
	}
	targets := strings.Split(*targetList, ",")
	seen := map[string]bool{}
	for _, t := range targets {
		if t == "" || seen[t] {
			usage("-targets: empty or repeated address " + fmt.Sprintf("%q", t))
		}
		seen[t] = true
	}
	requests, err := readDevices(*devicesPath)
	if err != nil {
		usage(err.Error())
	}
	conns, err := dial(targets, *perTarget)
	if err != nil {
		fmt.Fprintln(os.Stderr, "heartbeatload:", err)
		os.Exit(1)
	}

	n := len(requests)
	total := n * *rounds
	results := make([]result, total)
	// One outgoing context for every call: the metadata is the same, only the deadline differs.
	base := metadata.NewOutgoingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+*token))
	var wg sync.WaitGroup
	wg.Add(total)
	start := time.Now()
	// The scheduler: one goroutine sleeping until the next due time (timers for 100,000 calls up
	// front would cost memory and the runtime's timer heap for nothing). A call whose due time has
	// passed by the time the scheduler wakes starts at once, so a coarse sleep only bunches calls
	// and never drops the rate; the lag it causes is recorded.
	for k := range total {
		r, i := k/n, k%n
		due := time.Duration(r)*(*period) + time.Duration(int64(*period)*int64(i)/int64(n))
		if wait := time.Until(start.Add(due)); wait > 0 {
			time.Sleep(wait)
		}
		t := i % len(targets)
		conn := conns[t][(i/len(targets))%*perTarget]
		go func(slot *result, request []byte) {
			defer wg.Done()
			sent := time.Now()
			ctx, cancel := context.WithTimeout(base, *timeout)
			err := conn.Invoke(ctx, method, request, nil)
			answered := time.Now()
			cancel()
			*slot = result{target: t, due: due, lag: sent.Sub(start) - due, latency: answered.Sub(start) - due}
			if err != nil {
				slot.failed = failure(err)
			}
		}(&results[k], requests[i])
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, cs := range conns {
		for _, c := range cs {
			c.Close()
		}
	}
	fmt.Println(string(must(json.Marshal(report(results, targets, n, *rounds, *period, elapsed)))))
}

func report(results []result, targets []string, n, rounds int, period, elapsed time.Duration) ordered {
	interval := period / time.Duration(n)
	var lastSend time.Duration // into the window
	lags := make([]time.Duration, len(results))
	var all []time.Duration
	failedTotal := 0
	type perTarget struct {
		latencies []time.Duration
		over      map[int]int
		slowest   []result
		failed    map[string]int
	}
	per := make([]perTarget, len(targets))
	for t := range per {
		per[t] = perTarget{over: map[int]int{}, failed: map[string]int{}}
	}
	for k, r := range results {
		lags[k] = r.lag
		lastSend = max(lastSend, r.due+r.lag)
		p := &per[r.target]
		if r.failed != "" {
			p.failed[r.failed]++
			failedTotal++
			continue
		}
		all = append(all, r.latency)
		p.latencies = append(p.latencies, r.latency)
		p.slowest = append(p.slowest, r)
		if r.latency > 50*time.Millisecond {
			p.over[int(r.due/time.Second)]++
		}
	}
	var targetsOut ordered
	for t, p := range per {
		sort.Slice(p.slowest, func(i, j int) bool { return p.slowest[i].latency > p.slowest[j].latency })
		slowest := [][2]float64{}
		for _, r := range p.slowest[:min(10, len(p.slowest))] {
			slowest = append(slowest, [2]float64{math.Round(r.due.Seconds()*1000) / 1000, ms(r.latency)})
		}
		// Seconds in numeric order (a map's JSON keys would sort as strings: 0, 1, 10, 11, ..., 2).
		seconds := make([]int, 0, len(p.over))
		over := 0
		for second, c := range p.over {
			seconds = append(seconds, second)
			over += c
		}
		sort.Ints(seconds)
		var perSecond ordered
		for _, second := range seconds {
			perSecond.add(fmt.Sprint(second), p.over[second])
		}
		o := summary(p.latencies)
		o.add("over_50ms", over)
		o.add("over_50ms_per_second", perSecond)
		o.add("slowest", slowest)
		o.add("failed", p.failed)
		targetsOut.add(targets[t], o)
	}
	lagSorted := sortedDurations(lags)
	var lag ordered
	lag.add("p50", percentile(lagSorted, 0.5))
	lag.add("p99", percentile(lagSorted, 0.99))
	lag.add("max", percentile(lagSorted, 1))
	allOut := summary(all)
	allOut.add("failed", failedTotal)
	var o ordered
	o.add("devices", n)
	o.add("rounds", rounds)
	o.add("target_per_second", math.Round(float64(n)/period.Seconds()*10)/10)
	// The calls over the span they were started in, each owning one interval: equal to
	// target_per_second when every call started on time.
	o.add("started_per_second", math.Round(float64(len(results))/(lastSend+interval).Seconds()*10)/10)
	o.add("elapsed_s", math.Round(elapsed.Seconds()*1000)/1000)
	o.add("schedule_lag_ms", lag)
	o.add("cpu_s", cpuSeconds())
	o.add("all", allOut)
	o.add("per_target", targetsOut)
	return o
}

// cpuSeconds is this process's own CPU time (user, sys), so a caller can show the generator
// took little of the cores it shares with the servers.
func cpuSeconds() ordered {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	seconds := func(t syscall.Timeval) float64 { return math.Round(float64(t.Nano())/1e6) / 1000 }
	var o ordered
	o.add("user", seconds(ru.Utime))
	o.add("sys", seconds(ru.Stime))
	return o
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
