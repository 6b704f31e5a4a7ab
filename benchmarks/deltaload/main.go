// deltaload holds N concurrent Delta ADS streams against any xDS server, each as its own node, the
// way Envoy subscribes over Delta: a wildcard CDS subscription, then the endpoints of every EDS
// cluster by name, ACKing every response. It is gcpload (the go-control-plane baseline's load client)
// with the Delta protocol, and prints the same JSON lines:
//
//	{"event":"synced","streams":N,"wall_ms":..,"p50_ms":..,"p99_ms":..,"max_ms":..}
//	{"event":"update","version":"<key>","first_unix_ms":..,"p50_ms":..,"p99_ms":..,"last_ms":..,"streams":N}
//	{"event":"done","errors":E}
//
// An update is keyed by the EDS response's system_version_info (or, when the server leaves it
// empty, by the name and version of its first resource).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

type arrival struct {
	stream int
	at     time.Time
}

type tracker struct {
	mu       sync.Mutex
	versions map[string][]arrival
	order    []string
}

func (t *tracker) record(key string, stream int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.versions[key]; !ok {
		t.order = append(t.order, key)
	}
	t.versions[key] = append(t.versions[key], arrival{stream, at})
}

func pct(d []float64, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	sort.Float64s(d)
	i := int(p*float64(len(d))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(d) {
		i = len(d) - 1
	}
	return d[i]
}

func emit(v map[string]any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func run(ctx context.Context, conn *grpc.ClientConn, id int, role string, start time.Time, synced chan<- time.Duration, tr *tracker, errs *int64) {
	md, _ := structpb.NewStruct(map[string]any{"role": role})
	node := &core.Node{Id: fmt.Sprintf("load-%d", id), Cluster: "load", Metadata: md}
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		atomic.AddInt64(errs, 1)
		synced <- -1
		return
	}
	send := func(r *discoverygrpc.DeltaDiscoveryRequest) {
		if err := st.Send(r); err != nil && ctx.Err() == nil {
			atomic.AddInt64(errs, 1)
		}
	}
	send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType})
	subscribed := map[string]bool{}
	held := map[string]bool{}
	reported := false
	for {
		r, err := st.Recv()
		if err != nil {
			if ctx.Err() == nil {
				atomic.AddInt64(errs, 1)
				log.Printf("stream %d: %v", id, err)
			}
			if !reported {
				synced <- -1
			}
			return
		}
		now := time.Now()
		switch r.TypeUrl {
		case resource.ClusterType:
			var fresh []string
			for _, res := range r.Resources {
				c := &cluster.Cluster{}
				if err := res.Resource.UnmarshalTo(c); err == nil && c.GetType() == cluster.Cluster_EDS {
					name := c.Name
					if sn := c.GetEdsClusterConfig().GetServiceName(); sn != "" {
						name = sn
					}
					if !subscribed[name] {
						subscribed[name] = true
						fresh = append(fresh, name)
					}
				}
			}
			send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: r.Nonce})
			if len(fresh) > 0 {
				send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: fresh})
			}
		case resource.EndpointType:
			for _, res := range r.Resources {
				cla := &endpoint.ClusterLoadAssignment{}
				if err := res.Resource.UnmarshalTo(cla); err != nil {
					atomic.AddInt64(errs, 1)
				}
				held[res.Name] = true
			}
			send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: r.Nonce})
			if !reported {
				if len(held) >= len(subscribed) && len(subscribed) > 0 {
					reported = true
					synced <- now.Sub(start)
				}
			} else if len(r.Resources) > 0 {
				key := r.SystemVersionInfo
				if key == "" {
					key = r.Resources[0].Name + "@" + r.Resources[0].Version
				}
				tr.record(key, id, now)
			}
		default:
			send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
		}
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:18000", "xDS server (keep it on loopback)")
	streams := flag.Int("streams", 100, "concurrent Delta ADS streams, one node each")
	conns := flag.Int("conns", 0, "gRPC connections the streams share (0: one per 100 streams)")
	role := flag.String("role", "sidecar", "node.metadata.role of every stream")
	watch := flag.Duration("watch", 0, "after the initial sync, keep streams open this long and report updates")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up waiting for the initial sync after this long")
	flag.Parse()
	if *conns <= 0 {
		*conns = (*streams + 99) / 100
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pool := make([]*grpc.ClientConn, *conns)
	for i := range pool {
		c, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
		if err != nil {
			log.Fatal(err)
		}
		pool[i] = c
	}
	var errs int64
	tr := &tracker{versions: map[string][]arrival{}}
	synced := make(chan time.Duration, *streams)
	start := time.Now()
	for i := 0; i < *streams; i++ {
		go run(ctx, pool[i%len(pool)], i, *role, start, synced, tr, &errs)
	}
	var lat []float64
	failed := 0
	deadline := time.After(*timeout)
collect:
	for len(lat)+failed < *streams {
		select {
		case d := <-synced:
			if d < 0 {
				failed++
			} else {
				lat = append(lat, float64(d.Microseconds())/1000)
			}
		case <-deadline:
			break collect
		}
	}
	wall := time.Since(start)
	emit(map[string]any{"event": "synced", "streams": len(lat), "failed": failed, "wall_ms": float64(wall.Microseconds()) / 1000,
		"p50_ms": pct(append([]float64(nil), lat...), 0.5), "p99_ms": pct(append([]float64(nil), lat...), 0.99), "max_ms": pct(lat, 1.0)})
	if *watch > 0 {
		time.Sleep(*watch)
		tr.mu.Lock()
		for _, key := range tr.order {
			arr := tr.versions[key]
			first := arr[0].at
			for _, a := range arr {
				if a.at.Before(first) {
					first = a.at
				}
			}
			var off []float64
			for _, a := range arr {
				off = append(off, float64(a.at.Sub(first).Microseconds())/1000)
			}
			emit(map[string]any{"event": "update", "version": key, "first_unix_ms": first.UnixMilli(), "streams": len(arr),
				"p50_ms": pct(append([]float64(nil), off...), 0.5), "p99_ms": pct(append([]float64(nil), off...), 0.99), "last_ms": pct(off, 1.0)})
		}
		tr.mu.Unlock()
	}
	cancel()
	emit(map[string]any{"event": "done", "errors": atomic.LoadInt64(&errs)})
	os.Exit(0)
}
