package labctl

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// EchoDeployment is a Deployment of the lab's echo server (TCP/HTTP, UDP and
// SCTP on 8080), ready when its /healthz answers.
func EchoDeployment(ns, name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: v1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: v1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](5),
					Containers: []v1.Container{{
						Name: "echo", Image: "labecho", Args: []string{"serve"},
						Ports: []v1.ContainerPort{{ContainerPort: 8080, Protocol: v1.ProtocolTCP},
							{ContainerPort: 8080, Protocol: v1.ProtocolUDP}},
						ReadinessProbe: &v1.Probe{
							ProbeHandler:  v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
							PeriodSeconds: 1, FailureThreshold: 1,
						},
					}},
				},
			},
		},
	}
}

// EchoService is a NodePort Service (so also a ClusterIP) in front of an
// echo Deployment: port 80 over TCP and UDP to the pods' 8080.
func EchoService(ns, name string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:     v1.ServiceTypeNodePort,
			Selector: map[string]string{"app": name},
			Ports: []v1.ServicePort{
				{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)},
				{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(8080)},
			},
		},
	}
}

// EnsureNamespace creates a namespace if it does not exist.
func EnsureNamespace(ctx context.Context, cs kubernetes.Interface, ns string) error {
	_, err := cs.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// Demo deploys the sample app, then shows each node's IPVS table and which
// pod answers repeated requests to the ClusterIP and the NodePort from every
// node.
func Demo(ctx context.Context, c Config, w io.Writer) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	p := &Progress{W: w}
	const ns, name = "demo", "echo"
	p.Step("deploying %s/%s (3 replicas of the echo server) and a NodePort Service", ns, name)
	if err := EnsureNamespace(ctx, cs, ns); err != nil {
		return err
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, EchoDeployment(ns, name, 3), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, EchoService(ns, name), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	svc, err := cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	p.Step("waiting for 3 ready endpoints and for every node's IPVS table to show them")
	pods, err := c.WaitReadyEndpoints(ctx, ns, name, 3, 3*time.Minute)
	if err != nil {
		return err
	}
	cip := svc.Spec.ClusterIP
	nodePort := svc.Spec.Ports[0].NodePort
	for _, n := range c.NodeNames() {
		if err := c.WaitIPVSRealServers(ctx, n, "TCP", fmt.Sprintf("%s:80", cip), pods, 2*time.Minute); err != nil {
			return err
		}
	}
	p.End()

	for _, n := range c.NodeNames() {
		out, err := c.Output(ctx, n, "ipvsadm", "-Ln")
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "\n=== %s: ipvsadm -Ln\n%s", n, out)
	}
	podNames, err := c.PodIPNames(ctx, ns, "app="+name)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\nPods: %s\n", describePods(podNames))
	targets := []string{fmt.Sprintf("%s:80", cip)}
	for i := 1; i <= c.Nodes; i++ {
		targets = append(targets, fmt.Sprintf("%s:%d", NodeAddr(i), nodePort))
	}
	for _, n := range c.NodeNames() {
		for _, t := range targets {
			kind := "ClusterIP"
			if !strings.HasPrefix(t, cip) {
				kind = "NodePort "
			}
			out, _ := c.Output(ctx, n, guestBinDir+"/labecho", "client", "--proto", "tcp", "--addr", t, "--count", "6")
			fmt.Fprintf(w, "\n%s -> %s %-22s answered by: %s", n, kind, t, summarizeAnswers(out))
		}
	}
	fmt.Fprintln(w)
	return nil
}

func describePods(m map[string]string) string {
	var parts []string
	for ip, name := range m {
		parts = append(parts, name+"="+ip)
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// summarizeAnswers turns echo client lines ("<pod> <client addr>") into a
// compact list of the pods that answered, in order.
func summarizeAnswers(out string) string {
	var pods []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if f[0] == "ERR" {
			pods = append(pods, "ERR")
			continue
		}
		pods = append(pods, f[0])
	}
	return strings.Join(pods, " ")
}
