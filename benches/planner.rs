//! Planner cost: time and allocations of one `plan()` call for 1, 10 and 100 apps of 10
//! services each, with nothing to do (unchanged) and with every service changed.
//! Run: `cargo bench --bench planner` (a benchmark, not a test: it prints numbers).

use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tinyvisor::compose::service::{DeviceContext, ImageDefaults, ServiceOrigin};
use tinyvisor::compose::target::parse_device_target;
use tinyvisor::compose::{Network, Service, ServiceStatus};
use tinyvisor::planner::{plan, Context, CurrentApp, DesiredApp, ImageRef};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn apps(n: usize, env_value: &str) -> (Vec<DesiredApp>, Vec<ImageRef>) {
    let mut targets = Vec::new();
    let mut images = Vec::new();
    for a in 0..n {
        let uuid = format!("app{a:04}");
        let mut services = serde_json::Map::new();
        for s in 0..10 {
            services.insert(
                format!("svc{s}"),
                json!({"id": s + 1, "image_id": 100 + s, "image": format!("registry/app{a}/svc{s}:1"),
                    "environment": {"VALUE": env_value},
                    "composition": {"ports": [format!("{}:80", 20000 + s)], "volumes": ["data:/data"], "restart": "always"}}),
            );
        }
        let doc = json!({"name": "d", "config": {}, "apps": {uuid.clone(): {"id": a + 1, "name": "app", "releases": {"c1": {"id": 1,
            "services": services, "volumes": {"data": {}}, "networks": {}}}}}});
        let state = parse_device_target(&doc).unwrap();
        let t = &state.apps[&uuid];
        let rel = t.release.as_ref().unwrap();
        let mut out = Vec::new();
        for (name, svc) in &rel.services {
            let origin = ServiceOrigin {
                app_id: t.id,
                app_uuid: uuid.clone(),
                app_name: "app".into(),
                release_id: 1,
                commit: "c1".into(),
                service_name: name.clone(),
                api_key: None,
            };
            let img = ImageDefaults {
                id: format!("sha256:{a}-{name}"),
                ..Default::default()
            };
            let s = Service::from_target(svc, &origin, &DeviceContext::default(), Some(&img));
            images.push(ImageRef::for_service(&s));
            out.push(s);
        }
        targets.push(DesiredApp {
            app_id: t.id,
            app_uuid: uuid.clone(),
            name: "app".into(),
            commit: Some("c1".into()),
            services: out,
            networks: vec![Network::default_for(t.id, &uuid, false)],
            volumes: vec![],
            rejected: false,
        });
    }
    (targets, images)
}

fn as_current(targets: &[DesiredApp]) -> Vec<CurrentApp> {
    targets
        .iter()
        .map(|t| CurrentApp {
            app_id: t.app_id,
            app_uuid: t.app_uuid.clone(),
            commit: t.commit.clone(),
            services: t
                .services
                .iter()
                .map(|s| {
                    let mut c = s.clone();
                    c.status = ServiceStatus::Running;
                    c.container_id = Some(format!("id-{}-{}", t.app_id, s.service_name));
                    c.created_at = Some("2026-11-25T10:00:00Z".into());
                    c
                })
                .collect(),
            networks: t.networks.clone(),
            volumes: vec![],
        })
        .collect()
}

fn main() {
    println!(
        "{:>5} {:>12} {:>12} {:>10} {:>12} {:>6}",
        "apps", "case", "time/plan", "allocs", "alloc bytes", "steps"
    );
    // PLANNER_APPS=1000 (say) measures that size only, for a profiler.
    let sizes: Vec<usize> = match std::env::var("PLANNER_APPS") {
        Ok(n) => vec![n.parse().expect("PLANNER_APPS is a number")],
        Err(_) => vec![1, 10, 100, 1000],
    };
    for n in sizes {
        let (targets, images) = apps(n, "one");
        let current = as_current(&targets);
        let (changed, _) = apps(n, "two");
        let ctx = Context {
            supervisor_network_ready: true,
            extra_firmware_ready: true,
            available_images: images,
            ..Default::default()
        };
        for (case, target) in [("unchanged", &targets), ("all-changed", &changed)] {
            let reps = (2000 / n as u32).clamp(3, 200);
            let steps = plan(&current, target, &ctx).len();
            let (a0, b0) = (
                ALLOCS.load(Ordering::Relaxed),
                BYTES.load(Ordering::Relaxed),
            );
            let t0 = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(plan(std::hint::black_box(&current), target, &ctx));
            }
            let per = t0.elapsed() / reps;
            let allocs = (ALLOCS.load(Ordering::Relaxed) - a0) / reps as u64;
            let bytes = (BYTES.load(Ordering::Relaxed) - b0) / reps as u64;
            println!(
                "{n:>5} {case:>12} {:>12?} {allocs:>10} {bytes:>12} {steps:>6}",
                per
            );
        }
    }
}
