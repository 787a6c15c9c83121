// Package inspect shows a node's IPVS table the way `ipvsadm -Ln` does, with
// the Service port next to each virtual server and the endpoint (its Pod)
// next to each real server, as text or JSON. It is the `kube-ipvs-proxy
// inspect` command without the I/O: ReadKernel reads the table through the
// ipvs package's listing calls, Build matches it with Services and
// EndpointSlices listed from the API server, WriteText and WriteJSON render
// the Report.
//
// # JSON form
//
// WriteJSON writes the form below (JSONVersion 1). Virtual servers are
// sorted by address, port and protocol, real servers by address and port,
// services by namespace, name and port name. Lists are never null. A
// kernel-only report has no "services" and no "endpoint"; otherwise
// "services" is always there, [] for a virtual server no Service owns, and
// "endpoint" is left out for a real server that is none of the owners'
// endpoints.
//
//	{
//	  "version": 1,
//	  "kernelOnly": false,
//	  "virtualServers": [
//	    {
//	      "protocol": "TCP",                // TCP, UDP or SCTP
//	      "address": "10.96.0.10",
//	      "port": 53,
//	      "scheduler": "rr",
//	      "flags": [],                      // ipvsadm's words: "persistent", "ops",
//	                                        // "sh-fallback", "sh-port", ...; "0x40" for others
//	      "persistenceTimeout": 0,          // seconds, with "persistent"
//	      "services": [                     // absent when kernelOnly; [] for "not a Service"
//	        {"namespace": "kube-system", "name": "kube-dns", "portName": "dns-tcp",
//	         "kind": "ClusterIP"}           // ClusterIP, ExternalIP, LoadBalancer or NodePort
//	      ],
//	      "realServers": [
//	        {
//	          "address": "10.244.1.2",
//	          "port": 53,
//	          "forward": "Masq",            // Masq, Tunnel or Route
//	          "weight": 1,
//	          "draining": false,            // weight 0
//	          "activeConnections": 0,       // ipvsadm's ActiveConn
//	          "inactiveConnections": 0,     // ipvsadm's InActConn
//	          "endpoint": {                 // absent when none (and when kernelOnly)
//	            "slice": "kube-dns-7xk2p",
//	            "targetRef": {"kind": "Pod", "namespace": "kube-system",
//	                          "name": "coredns-5d78c9869d-x8x2v"},
//	                                        // absent when none; no "namespace" for a cluster-scoped object
//	            "nodeName": "node-1",       // absent when unset
//	            "ready": true, "serving": true, "terminating": false
//	          }
//	        }
//	      ]
//	    }
//	  ]
//	}
package inspect
