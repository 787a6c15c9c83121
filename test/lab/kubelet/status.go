package kubelet

import (
	"fmt"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podRuntime is what the kubelet knows about a pod, the input of
// buildStatus.
type podRuntime struct {
	PodIPs  []netip.Addr // IPv4 first; nil until the network is set up
	HostIPs []string     // the node's InternalIPs, IPv4 first; nil until known
	Proc    procState
	Ready   bool      // the container is ready (process, probe, unready file)
	Started time.Time // when the kubelet first saw the pod (status.startTime)
}

// apiTime is t as the API stores it (whole seconds), so that a status read
// back from the API compares equal to the one built here and nothing is
// written twice.
func apiTime(t time.Time) metav1.Time {
	return metav1.NewTime(t).Rfc3339Copy()
}

// buildStatus is the pod's status given rt, starting from the current
// status so that fields this kubelet does not own (qosClass, conditions of
// others, resize) are kept, and transition times stay put when nothing
// changed. Only the first container is run and reported.
func buildStatus(pod *v1.Pod, rt podRuntime, now time.Time) v1.PodStatus {
	st := *pod.Status.DeepCopy()
	nowT := apiTime(now)

	st.ObservedGeneration = pod.Generation
	everStarted := rt.Proc.Generation > 0 || rt.Proc.Restarts > 0
	if everStarted {
		st.Phase = v1.PodRunning
	} else {
		st.Phase = v1.PodPending
	}
	if st.StartTime == nil {
		t := apiTime(rt.Started)
		if rt.Started.IsZero() {
			t = nowT
		}
		st.StartTime = &t
	}
	if len(rt.HostIPs) > 0 {
		st.HostIP = rt.HostIPs[0]
		st.HostIPs = nil
		for _, ip := range rt.HostIPs {
			st.HostIPs = append(st.HostIPs, v1.HostIP{IP: ip})
		}
	}
	netReady := len(rt.PodIPs) > 0
	if netReady {
		st.PodIP = rt.PodIPs[0].String()
		st.PodIPs = nil
		for _, ip := range rt.PodIPs {
			st.PodIPs = append(st.PodIPs, v1.PodIP{IP: ip.String()})
		}
	}

	setCondition(&st, v1.PodScheduled, true, "", "", nowT)
	setCondition(&st, v1.PodReadyToStartContainers, netReady, "", "", nowT)
	setCondition(&st, v1.PodInitialized, true, "", "", nowT)
	notReadyReason, notReadyMsg := "", ""
	if !rt.Ready && len(pod.Spec.Containers) > 0 {
		notReadyReason = "ContainersNotReady"
		notReadyMsg = fmt.Sprintf("containers with unready status: [%s]", pod.Spec.Containers[0].Name)
	}
	setCondition(&st, v1.ContainersReady, rt.Ready, notReadyReason, notReadyMsg, nowT)
	setCondition(&st, v1.PodReady, rt.Ready, notReadyReason, notReadyMsg, nowT)

	if len(pod.Spec.Containers) > 0 {
		st.ContainerStatuses = []v1.ContainerStatus{containerStatus(pod, rt)}
	}
	return st
}

func containerStatus(pod *v1.Pod, rt podRuntime) v1.ContainerStatus {
	c := pod.Spec.Containers[0]
	running := rt.Proc.Running
	cs := v1.ContainerStatus{
		Name:         c.Name,
		Image:        c.Image,
		ImageID:      "lab://" + c.Image,
		Ready:        rt.Ready && running,
		Started:      &running,
		RestartCount: rt.Proc.Restarts,
	}
	if len(rt.PodIPs) > 0 {
		cs.ContainerID = "lab://" + PodNetnsName(pod.UID)
	}
	if running {
		cs.State.Running = &v1.ContainerStateRunning{StartedAt: apiTime(rt.Proc.StartedAt)}
	} else {
		reason := rt.Proc.Waiting
		if reason == "" {
			reason = "ContainerCreating"
		}
		cs.State.Waiting = &v1.ContainerStateWaiting{Reason: reason}
	}
	if e := rt.Proc.LastExit; e != nil {
		reason := "Error"
		if e.Code == 0 {
			reason = "Completed"
		}
		cs.LastTerminationState.Terminated = &v1.ContainerStateTerminated{
			ExitCode:   int32(e.Code),
			Reason:     reason,
			StartedAt:  apiTime(e.StartedAt),
			FinishedAt: apiTime(e.FinishedAt),
		}
	}
	return cs
}

// setCondition sets a condition, keeping its transition time unless the
// status flips.
func setCondition(st *v1.PodStatus, t v1.PodConditionType, ok bool, reason, msg string, now metav1.Time) {
	status := v1.ConditionFalse
	if ok {
		status = v1.ConditionTrue
	}
	for i := range st.Conditions {
		c := &st.Conditions[i]
		if c.Type != t {
			continue
		}
		if c.Status != status {
			c.LastTransitionTime = now
		}
		c.Status, c.Reason, c.Message = status, reason, msg
		return
	}
	st.Conditions = append(st.Conditions, v1.PodCondition{
		Type: t, Status: status, Reason: reason, Message: msg, LastTransitionTime: now,
	})
}

// statusEqual compares statuses the way the API round-trips them.
func statusEqual(a, b v1.PodStatus) bool {
	return apiequality.Semantic.DeepEqual(a, b)
}

// podReady reads the Ready condition.
func podReady(st v1.PodStatus) bool {
	for _, c := range st.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}
