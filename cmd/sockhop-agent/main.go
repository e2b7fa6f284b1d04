// Command sockhop-agent is sockhop's node agent, run by a DaemonSet: it
// loads the datapath and keeps it attached to the cgroups of this node's
// pods in namespaces labelled for acceleration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/sockhop/sockhop/controllers"
	"github.com/sockhop/sockhop/pkg/cgroup"
	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/metrics"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "sockhop-agent: %v\n", err)
		os.Exit(1)
	}
}

// config is what the flags say.
type config struct {
	nodeName           string
	selector           controllers.NamespaceSelector
	bpffsDir           string
	cgroup             cgroup.Options
	cgroupDriver       string
	proxyUIDs          string
	appReceivers       string // auto, true, false
	maxConnections     int
	syscallGuard       bool
	abortStranded      bool
	netnsDirs          string
	metricsAddr        string
	probeAddr          string
	uninstallOnDelete  bool
	daemonSetName      string // from the environment, for uninstallOnDelete
	daemonSetNamespace string
	podName            string // the agent's own pod, to find its DaemonSet's UID
	resyncPeriod       time.Duration
	zap                zap.Options
}

// bindFlags defines the agent's flags on fs.
func bindFlags(fs *flag.FlagSet) *config {
	c := &config{}
	fs.StringVar(&c.nodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node (default: $NODE_NAME)")
	fs.StringVar(&c.selector.Key, "namespace-label-key", controllers.DefaultNamespaceLabelKey, "label key that opts a namespace in")
	fs.StringVar(&c.selector.Value, "namespace-label-value", controllers.DefaultNamespaceLabelValue, "value of that label that opts a namespace in")
	fs.StringVar(&c.bpffsDir, "bpffs-dir", datapath.DefaultPinDir, "bpffs directory for sockhop's pins")
	fs.StringVar(&c.cgroup.Mount, "cgroup-mount", "", "cgroup v2 mount point (default: detected)")
	fs.StringVar(&c.cgroupDriver, "cgroup-driver", "", "kubelet's cgroup driver, cgroupfs or systemd (default: detected)")
	fs.StringVar(&c.cgroup.CgroupRoot, "cgroup-root", "", "kubelet's --cgroup-root (default: /)")
	fs.StringVar(&c.appReceivers, "app-receivers", "auto",
		"redirect into application sockets too, behind the receiver guard: auto or true (the same), or false (proxy-owned sockets only)")
	fs.StringVar(&c.proxyUIDs, "proxy-uids", "1337,2102,5678", "comma-separated uids of sidecar proxies (the receivers --app-receivers=false allows)")
	fs.BoolVar(&c.syscallGuard, "syscall-guard", true,
		"mark a receiver unsafe before it splices or reads with MSG_WAITALL (per-syscall tracepoints, or sys_enter: every syscall on the node takes the traced entry path, tens of ns each)")
	fs.BoolVar(&c.abortStranded, "abort-stranded", true,
		"abort the connection of a receiver that starts to splice with redirected bytes unread (it could never read them): both ends see an error instead of a stall; needs CAP_SYS_ADMIN (to enter the pod's network namespace) and the node's network namespaces in --netns-dirs")
	fs.StringVar(&c.netnsDirs, "netns-dirs", "/var/run/netns,/run/netns",
		"comma-separated directories holding the node's pod network namespaces (bind mounts, as containerd and CRI-O keep them), searched by --abort-stranded")
	fs.IntVar(&c.maxConnections, "max-connections", datapath.DefaultMaxConnections,
		"connections the node's maps can pair at once; past it new ones stay on TCP (changing it replaces the maps; live connections carry on)")
	fs.StringVar(&c.metricsAddr, "metrics-bind-address", ":9962", "address of the Prometheus metrics endpoint (0 disables it)")
	fs.StringVar(&c.probeAddr, "health-probe-bind-address", ":9963", "address of /healthz and /readyz")
	fs.BoolVar(&c.uninstallOnDelete, "uninstall-on-delete", true,
		"on SIGTERM, remove every sockhop program and pin from the node if the agent's DaemonSet ($DAEMONSET_NAME in $POD_NAMESPACE) is gone or being deleted")
	fs.DurationVar(&c.resyncPeriod, "resync-period", controllers.DefaultResyncPeriod,
		"how often the whole node is converged again (pods and pins), besides the watches")
	c.daemonSetName = os.Getenv("DAEMONSET_NAME")
	c.podName = os.Getenv("POD_NAME")
	c.daemonSetNamespace = os.Getenv("POD_NAMESPACE")
	c.zap.BindFlags(fs)
	return c
}

// validate checks the flags and fills what they imply.
func (c *config) validate() error {
	if c.nodeName == "" {
		return errors.New("no node name: set --node-name or $NODE_NAME")
	}
	if c.selector.Key == "" {
		return errors.New("--namespace-label-key is empty")
	}
	switch c.appReceivers {
	case "auto", "true", "false":
	default:
		return fmt.Errorf("--app-receivers: want auto, true or false, got %q", c.appReceivers)
	}
	if c.resyncPeriod <= 0 {
		return fmt.Errorf("--resync-period must be positive, got %s", c.resyncPeriod)
	}
	c.cgroup.Driver = cgroup.Driver(c.cgroupDriver)
	return nil
}

// parseUIDs parses a comma-separated list of uids.
func parseUIDs(s string) ([]uint32, error) {
	uids := []uint32{}
	if strings.TrimSpace(s) == "" {
		return uids, nil
	}
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("invalid uid %q in %q", f, s)
		}
		uids = append(uids, uint32(n))
	}
	return uids, nil
}

func run() error {
	c := bindFlags(flag.CommandLine)
	flag.Parse()
	if err := c.validate(); err != nil {
		return err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&c.zap)))
	return runAgent(ctrl.SetupSignalHandler(), c, ctrl.Log.WithName("agent"))
}

// runAgent runs the agent until ctx is done (SIGTERM).
func runAgent(ctx context.Context, c *config, logger logr.Logger) error {
	proxyUIDs, err := parseUIDs(c.proxyUIDs)
	if err != nil {
		return fmt.Errorf("--proxy-uids: %w", err)
	}

	cacheOpts, err := controllers.CacheOptions(c.nodeName, c.selector)
	if err != nil {
		return err
	}
	restCfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	m := metrics.New(version)
	if err := m.Register(ctrlmetrics.Registry); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}

	// One agent per node at a time: a second one (a re-created DaemonSet, a
	// rolling update with surge) waits here until the first has exited, or
	// uninstalled, so that the two never interleave on the pins.
	lock, err := datapath.LockNode(ctx, c.bpffsDir, func() {
		logger.Info("another sockhop agent holds the node lock; waiting until it exits", "pinDir", c.bpffsDir)
	})
	if err != nil && ctx.Err() != nil {
		return nil // stopped while waiting: the other agent owns the node
	}
	defer lock.Unlock()

	// Nothing the datapath can fail at is a crash loop: the agent stays up,
	// unready, says why once, and every pod keeps plain TCP.
	var (
		degraded error
		dp       *datapath.Datapath
	)
	if err != nil {
		degraded = fmt.Errorf("lock the pin directory: %w", err)
		logger.Error(err, "cannot lock the pin directory; accelerating nothing, pods keep plain TCP", "pinDir", c.bpffsDir)
	} else {
		dp, degraded = loadDatapath(datapath.Load, datapath.Options{PinDir: c.bpffsDir, ProxyUIDs: proxyUIDs,
			AppReceivers: appReceivers(ctx, c.appReceivers, logger), MaxConnections: c.maxConnections, NoSyscallGuard: !c.syscallGuard}, logger)
	}
	if dp != nil {
		if err := datapath.MarkAgentManaged(c.bpffsDir); err != nil {
			logger.Error(err, "cannot mark the datapath as the agent's; `sockhop attach` will not know an agent manages this node")
		}
		m.SetCounterSource(dp)
		logger.Info("datapath loaded", "pinDir", c.bpffsDir, "version", version)
	}

	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                  scheme,
		Cache:                   cacheOpts,
		Metrics:                 metricsserver.Options{BindAddress: c.metricsAddr},
		HealthProbeBindAddress:  c.probeAddr,
		LeaderElection:          false, // one agent per node, each on its own pods
		GracefulShutdownTimeout: ptr(10 * time.Second),
	})
	if err != nil {
		closeDatapath(dp, logger)
		return fmt.Errorf("create manager: %w", err)
	}
	var (
		rec      *controllers.PodReconciler
		resolver *cgroup.Resolver
	)
	if dp != nil {
		if resolver, err = cgroup.NewResolver(c.cgroup); err != nil {
			logger.Error(err, "cannot find the pods' cgroups; accelerating nothing, pods keep plain TCP")
			degraded = fmt.Errorf("find the pods' cgroups: %w", err)
		}
	}
	if dp != nil && degraded == nil {
		rec = &controllers.PodReconciler{
			Client:   mgr.GetClient(),
			Recorder: mgr.GetEventRecorder("sockhop-agent"),
			Datapath: dp,
			Cgroups:  resolver,
			Metrics:  m,
			NodeName: c.nodeName,
			Selector: c.selector,

			ResyncPeriod: c.resyncPeriod,
		}
		if err := rec.SetupWithManager(mgr); err != nil {
			closeDatapath(dp, logger)
			return fmt.Errorf("set up pod controller: %w", err)
		}
		// Aborting stranded receivers' connections, where the kernel can
		// (bpf_sock_destroy, Linux 6.5); elsewhere they may stall, and the
		// hazard reporter's Warning says so.
		aborts := false
		if c.abortStranded {
			if err := datapath.ProbeAbort(); err != nil {
				logger.Error(err, "stranded receivers will not be aborted: their connections may stall (docs/hazards.md)")
			} else {
				aborts = true
				dirs := strings.Split(c.netnsDirs, ",")
				err := mgr.Add(&controllers.StrandAborter{Source: dp, Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("sockhop-agent"),
					FindNetns: func(inode uint64) (string, error) { return datapath.FindNetns(inode, dirs, nil) }})
				if err != nil {
					closeDatapath(dp, logger)
					return fmt.Errorf("set up strand aborter: %w", err)
				}
			}
		}
		// Events for containers the receiver guard learnt to keep on TCP.
		if err := mgr.Add(&controllers.HazardReporter{Source: dp, Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("sockhop-agent"), Aborts: aborts}); err != nil {
			closeDatapath(dp, logger)
			return fmt.Errorf("set up hazard reporter: %w", err)
		}
		// Per-pod summaries of what was redirected, rate-limited.
		if err := mgr.Add(&controllers.PodSummaryReporter{Source: dp, Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("sockhop-agent")}); err != nil {
			closeDatapath(dp, logger)
			return fmt.Errorf("set up pod summary reporter: %w", err)
		}
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	var conv convergedState
	if rec != nil {
		conv = rec
	}
	ready := readiness(degraded, conv)
	m.SetReadiness(func() bool { return ready(nil) == nil })
	if err := mgr.AddReadyzCheck("datapath", ready); err != nil {
		return err
	}

	var dsWatch *daemonSetWatch
	if c.uninstallOnDelete && c.daemonSetName != "" && c.daemonSetNamespace != "" {
		dsWatch = watchDaemonSet(ctx, restCfg, scheme, c, logger)
	}
	runErr := mgr.Start(ctx)
	closeDatapath(dp, logger)
	if runErr != nil {
		return fmt.Errorf("run manager: %w", runErr)
	}
	if c.uninstallOnDelete && lock != nil {
		uninstallIfDeleted(restCfg, scheme, c, dsWatch, logger)
	}
	return nil
}

// appReceivers decides whether application sockets may receive redirected
// data. "auto" (the default) allows it: the datapath's receiver guard keeps
// a direction on TCP until its receiver has been seen reading with recvmsg,
// and never redirects into one that splices or waits for all
// (docs/hazards.md). It also runs the hazard self-test, whose report says
// which of those hazards this kernel has. "false" redirects into
// proxy-owned sockets only.
func appReceivers(ctx context.Context, mode string, logger logr.Logger) bool {
	if mode != "auto" {
		return mode == "true"
	}
	rep, err := datapath.SelfTest(ctx)
	if err != nil {
		logger.Error(err, "hazard self-test failed")
	}
	for _, r := range rep.Results {
		logger.Info("redirect hazard self-test", "hazard", r.Hazard, "status", r.Status, "detail", r.Detail)
	}
	logger.Info("receiver policy chosen", "appReceivers", true, "guard", "receivers seen reading with recvmsg, never splicers or MSG_WAITALL readers")
	return true
}

// loadDatapath loads the datapath; any failure (a missing kernel feature, a
// verifier or CO-RE relocation error, incompatible pins) is returned as the
// reason the agent is degraded, never as an error that ends the agent.
func loadDatapath(load func(datapath.Options) (*datapath.Datapath, error), opts datapath.Options, logger logr.Logger) (*datapath.Datapath, error) {
	dp, err := load(opts)
	if err == nil {
		return dp, nil
	}
	var fe *datapath.FeatureError
	if errors.As(err, &fe) {
		logger.Error(err, "this kernel cannot run sockhop; accelerating nothing, pods keep plain TCP", "feature", fe.Feature)
	} else {
		logger.Error(err, "cannot load the datapath; accelerating nothing, pods keep plain TCP", "pinDir", opts.PinDir)
	}
	return nil, fmt.Errorf("load datapath: %w", err)
}

// convergedState is what readiness needs of the reconciler.
type convergedState interface {
	// Ready is nil once the first convergence is done and the last one
	// could read the datapath's pins.
	Ready() error
}

// readiness is the agent's /readyz check, and sockhop_datapath_ready:
// ready once the datapath is loaded and converged, and for as long as the
// pins can be read; a degraded agent is never ready and says why.
func readiness(degraded error, rec convergedState) healthz.Checker {
	return func(*http.Request) error {
		switch {
		case degraded != nil:
			return fmt.Errorf("degraded, accelerating nothing: %w", degraded)
		case rec == nil:
			return errors.New("no pod controller")
		}
		return rec.Ready()
	}
}

func closeDatapath(dp *datapath.Datapath, logger logr.Logger) {
	if dp == nil {
		return
	}
	if err := dp.Close(); err != nil {
		logger.Error(err, "close datapath")
	}
}

func ptr[T any](v T) *T { return &v }
