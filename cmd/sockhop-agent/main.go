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
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
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
	metricsAddr        string
	probeAddr          string
	uninstallOnDelete  bool
	daemonSetName      string // from the environment, for uninstallOnDelete
	daemonSetNamespace string
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
		"mark a receiver unsafe before it splices or reads with MSG_WAITALL (a sys_enter tracepoint: every syscall on the node takes the traced entry path, tens of ns each)")
	fs.IntVar(&c.maxConnections, "max-connections", datapath.DefaultMaxConnections,
		"connections the node's maps can pair at once; past it new ones stay on TCP (changing it replaces the maps; live connections carry on)")
	fs.StringVar(&c.metricsAddr, "metrics-bind-address", ":9962", "address of the Prometheus metrics endpoint (0 disables it)")
	fs.StringVar(&c.probeAddr, "health-probe-bind-address", ":9963", "address of /healthz and /readyz")
	fs.BoolVar(&c.uninstallOnDelete, "uninstall-on-delete", true,
		"on SIGTERM, remove every sockhop program and pin from the node if the agent's DaemonSet ($DAEMONSET_NAME in $POD_NAMESPACE) is gone or being deleted")
	c.daemonSetName = os.Getenv("DAEMONSET_NAME")
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

	// A kernel without a feature sockhop needs is not a crash loop: the agent
	// stays up, unready, says why once, and every pod keeps plain TCP.
	var degraded error
	dp, err := datapath.Load(datapath.Options{PinDir: c.bpffsDir, ProxyUIDs: proxyUIDs,
		AppReceivers: appReceivers(ctx, c.appReceivers, logger), MaxConnections: c.maxConnections, NoSyscallGuard: !c.syscallGuard})
	var fe *datapath.FeatureError
	switch {
	case errors.As(err, &fe):
		degraded = err
		logger.Error(err, "this kernel cannot run sockhop; accelerating nothing, pods keep plain TCP", "feature", fe.Feature)
	case err != nil:
		return fmt.Errorf("load datapath: %w", err)
	default:
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
	var rec *controllers.PodReconciler
	if dp != nil {
		resolver, err := cgroup.NewResolver(c.cgroup)
		if err != nil {
			closeDatapath(dp, logger)
			return err
		}
		rec = &controllers.PodReconciler{
			Client:   mgr.GetClient(),
			Recorder: mgr.GetEventRecorder("sockhop-agent"),
			Datapath: dp,
			Cgroups:  resolver,
			Metrics:  m,
			NodeName: c.nodeName,
			Selector: c.selector,
		}
		if err := rec.SetupWithManager(mgr); err != nil {
			closeDatapath(dp, logger)
			return fmt.Errorf("set up pod controller: %w", err)
		}
		// Events for containers the receiver guard learnt to keep on TCP.
		if err := mgr.Add(&controllers.HazardReporter{Source: dp, Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("sockhop-agent")}); err != nil {
			closeDatapath(dp, logger)
			return fmt.Errorf("set up hazard reporter: %w", err)
		}
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	synced := func() bool { return rec != nil && rec.Synced() }
	if err := mgr.AddReadyzCheck("datapath", readiness(degraded, synced)); err != nil {
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
	if c.uninstallOnDelete {
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

// daemonSetWatch remembers whether the agent's own DaemonSet was seen being
// deleted while the agent ran. `helm uninstall` deletes the DaemonSet and,
// right after, the agent's ServiceAccount and RBAC: by the time the agent
// gets SIGTERM it may no longer be allowed to ask.
type daemonSetWatch struct{ deleted atomic.Bool }

func watchDaemonSet(ctx context.Context, restCfg *rest.Config, scheme *runtime.Scheme, c *config, logger logr.Logger) *daemonSetWatch {
	w := &daemonSetWatch{}
	cl, err := client.NewWithWatch(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		logger.Error(err, "cannot watch the agent's DaemonSet; uninstall will rely on a last look at shutdown")
		return w
	}
	go func() {
		for ctx.Err() == nil {
			wi, err := cl.Watch(ctx, &appsv1.DaemonSetList{}, client.InNamespace(c.daemonSetNamespace),
				client.MatchingFields{"metadata.name": c.daemonSetName})
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(5 * time.Second):
				}
				continue
			}
			for ev := range wi.ResultChan() {
				ds, ok := ev.Object.(*appsv1.DaemonSet)
				if ok && (ev.Type == watch.Deleted || ds.DeletionTimestamp != nil) {
					w.deleted.Store(true)
				}
			}
			wi.Stop()
		}
	}()
	return w
}

// readiness is the agent's /readyz check: ready once the datapath is loaded
// and the first convergence is done; a degraded agent (the kernel lacks a
// feature) is never ready and says why.
func readiness(degraded error, synced func() bool) healthz.Checker {
	return func(*http.Request) error {
		switch {
		case degraded != nil:
			return fmt.Errorf("degraded, accelerating nothing: %w", degraded)
		case !synced():
			return errors.New("first convergence not done yet")
		}
		return nil
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

// uninstallIfDeleted removes sockhop from the node when the agent stops
// because its DaemonSet is gone or being deleted (helm uninstall). A
// restart, crash, upgrade or drain leaves the DaemonSet in place: then the
// pins, and with them every accelerated connection, stay for the next agent.
// When the DaemonSet cannot be read, nothing is removed.
func uninstallIfDeleted(restCfg *rest.Config, scheme *runtime.Scheme, c *config, w *daemonSetWatch, logger logr.Logger) {
	if c.daemonSetName == "" || c.daemonSetNamespace == "" {
		logger.Info("DAEMONSET_NAME or POD_NAMESPACE unset: keeping the datapath installed")
		return
	}
	if w != nil && w.deleted.Load() {
		logger.Info("DaemonSet was deleted while the agent ran: uninstalling the datapath", "daemonset", c.daemonSetName)
		uninstall(c, logger)
		return
	}
	cl, err := client.New(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		logger.Error(err, "cannot check the DaemonSet; keeping the datapath installed")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := types.NamespacedName{Namespace: c.daemonSetNamespace, Name: c.daemonSetName}
	var ds appsv1.DaemonSet
	err = cl.Get(ctx, key, &ds)
	switch {
	case apierrors.IsNotFound(err):
		logger.Info("DaemonSet is gone: uninstalling the datapath", "daemonset", key)
	case apierrors.IsUnauthorized(err):
		// The API server rejects the token of a deleted ServiceAccount:
		// the chart that owns both is being removed.
		logger.Info("the agent's ServiceAccount is gone: uninstalling the datapath", "daemonset", key)
	case err != nil:
		logger.Error(err, "cannot check the DaemonSet; keeping the datapath installed", "daemonset", key)
		return
	case ds.DeletionTimestamp != nil:
		logger.Info("DaemonSet is being deleted: uninstalling the datapath", "daemonset", key)
	default:
		logger.Info("DaemonSet still exists (restart, upgrade or drain): keeping the datapath installed", "daemonset", key)
		return
	}
	uninstall(c, logger)
}

func uninstall(c *config, logger logr.Logger) {
	if err := datapath.Uninstall(c.bpffsDir); err != nil {
		logger.Error(err, "uninstall datapath", "pinDir", c.bpffsDir)
		return
	}
	logger.Info("datapath uninstalled; established connections continue over TCP", "pinDir", c.bpffsDir)
}

func ptr[T any](v T) *T { return &v }
