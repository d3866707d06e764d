//! The hall's meters as a Redfish service (DMTF DSP0268, `PowerEquipment`):
//! service root, the power-equipment resource, one collection per kind of
//! equipment, each piece of equipment with its `PowerDistributionMetrics` and
//! its power and energy `Sensor`s. Reads the hall at the request instant;
//! writes nothing.
//!
//! - `utility-a` (facility): `/redfish/v1/PowerEquipment/Switchgear/utility-a`
//! - `pdu-r{R}` (IT): `/redfish/v1/PowerEquipment/RackPDUs/pdu-r{R}`
//! - `cooling-1` (cooling): `/redfish/v1/PowerEquipment/FloorPDUs/cooling-1`
//!
//! `…/Metrics` carries `PowerWatts.Reading` (W) and `EnergykWh.Reading`
//! (kWh, full f64 precision), exact at the instant the request is handled.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::hall::{MeterInfo, MeterRole};
use crate::server::{error_response, Shared};

/// The Redfish service root.
pub const ROOT: &str = "/redfish/v1/";
/// The power-equipment resource.
pub const POWER_EQUIPMENT: &str = "/redfish/v1/PowerEquipment";
/// Joules in a kilowatt-hour.
const J_PER_KWH: f64 = 3.6e6;
/// The collections this service has, in the order the power equipment lists them.
const COLLECTIONS: [&str; 3] = ["RackPDUs", "FloorPDUs", "Switchgear"];

/// The `PowerEquipment` collection a meter of this role lives in.
pub fn collection(role: MeterRole) -> &'static str {
    match role {
        MeterRole::Facility => "Switchgear",
        MeterRole::It => "RackPDUs",
        MeterRole::Cooling => "FloorPDUs",
    }
}

/// The path of a meter's equipment resource.
pub fn equipment_path(meter: &MeterInfo) -> String {
    format!("{POWER_EQUIPMENT}/{}/{}", collection(meter.role), meter.id)
}

/// The path of a meter's `PowerDistributionMetrics` resource (what agents poll).
pub fn metrics_path(meter: &MeterInfo) -> String {
    format!("{}/Metrics", equipment_path(meter))
}

fn equipment_type(role: MeterRole) -> &'static str {
    match role {
        MeterRole::Facility => "Switchgear",
        MeterRole::It => "RackPDU",
        MeterRole::Cooling => "FloorPDU",
    }
}

/// The Redfish routes, to merge into the server's router.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/redfish/v1", get(service_root))
        .route(ROOT, get(service_root))
        .route(POWER_EQUIPMENT, get(power_equipment))
        .route(
            "/redfish/v1/PowerEquipment/{collection}",
            get(equipment_collection),
        )
        .route(
            "/redfish/v1/PowerEquipment/{collection}/{id}",
            get(equipment),
        )
        .route(
            "/redfish/v1/PowerEquipment/{collection}/{id}/Metrics",
            get(metrics),
        )
        .route(
            "/redfish/v1/PowerEquipment/{collection}/{id}/Sensors",
            get(sensors),
        )
        .route(
            "/redfish/v1/PowerEquipment/{collection}/{id}/Sensors/{sensor}",
            get(sensor),
        )
}

async fn service_root() -> Json<Value> {
    Json(json!({
        "@odata.type": "#ServiceRoot.v1_16_0.ServiceRoot",
        "@odata.id": ROOT,
        "Id": "RootService",
        "Name": "dcwatt simulated hall",
        "RedfishVersion": "1.19.0",
        "PowerEquipment": { "@odata.id": POWER_EQUIPMENT },
    }))
}

async fn power_equipment() -> Json<Value> {
    let mut body = json!({
        "@odata.type": "#PowerEquipment.v1_2_0.PowerEquipment",
        "@odata.id": POWER_EQUIPMENT,
        "Id": "PowerEquipment",
        "Name": "Power Equipment",
        "Status": { "State": "Enabled", "Health": "OK" },
    });
    for c in COLLECTIONS {
        body[c] = json!({ "@odata.id": format!("{POWER_EQUIPMENT}/{c}") });
    }
    Json(body)
}

async fn equipment_collection(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Response {
    if !COLLECTIONS.contains(&name.as_str()) {
        return not_found(&format!("{POWER_EQUIPMENT}/{name}"));
    }
    let members: Vec<Value> = shared
        .hall()
        .meters()
        .iter()
        .filter(|m| collection(m.role) == name)
        .map(|m| json!({ "@odata.id": equipment_path(m) }))
        .collect();
    Json(json!({
        "@odata.type": "#PowerDistributionCollection.PowerDistributionCollection",
        "@odata.id": format!("{POWER_EQUIPMENT}/{name}"),
        "Name": format!("{name} Collection"),
        "Members@odata.count": members.len(),
        "Members": members,
    }))
    .into_response()
}

/// The meter at `/PowerEquipment/{collection}/{id}`, if there is one.
fn find(shared: &Shared, collection_name: &str, id: &str) -> Option<MeterInfo> {
    shared
        .hall()
        .meter(id)
        .filter(|m| collection(m.role) == collection_name)
        .cloned()
}

async fn equipment(
    State(shared): State<Arc<Shared>>,
    Path((collection_name, id)): Path<(String, String)>,
) -> Response {
    let Some(meter) = find(&shared, &collection_name, &id) else {
        return not_found(&format!("{POWER_EQUIPMENT}/{collection_name}/{id}"));
    };
    let path = equipment_path(&meter);
    Json(json!({
        "@odata.type": "#PowerDistribution.v1_3_0.PowerDistribution",
        "@odata.id": path,
        "Id": meter.id,
        "Name": format!("{} {}", equipment_type(meter.role), meter.id),
        "EquipmentType": equipment_type(meter.role),
        "Manufacturer": "dcwatt",
        "Model": "simulated",
        "Status": { "State": "Enabled", "Health": "OK" },
        "Metrics": { "@odata.id": format!("{path}/Metrics") },
        "Sensors": { "@odata.id": format!("{path}/Sensors") },
    }))
    .into_response()
}

async fn metrics(
    State(shared): State<Arc<Shared>>,
    Path((collection_name, id)): Path<(String, String)>,
) -> Response {
    let Some(meter) = find(&shared, &collection_name, &id) else {
        return not_found(&format!("{POWER_EQUIPMENT}/{collection_name}/{id}"));
    };
    let reading = match shared.hall().meter_reading(&meter.id, crate::now_ms()) {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let path = equipment_path(&meter);
    Json(json!({
        "@odata.type": "#PowerDistributionMetrics.v1_3_0.PowerDistributionMetrics",
        "@odata.id": format!("{path}/Metrics"),
        "Id": "Metrics",
        "Name": format!("Summary Metrics for {}", meter.id),
        "PowerWatts": {
            "Reading": reading.power_watts,
            "DataSourceUri": format!("{path}/Sensors/Power"),
        },
        "EnergykWh": {
            "Reading": reading.energy_joules / J_PER_KWH,
            "DataSourceUri": format!("{path}/Sensors/Energy"),
        },
    }))
    .into_response()
}

async fn sensors(
    State(shared): State<Arc<Shared>>,
    Path((collection_name, id)): Path<(String, String)>,
) -> Response {
    let Some(meter) = find(&shared, &collection_name, &id) else {
        return not_found(&format!("{POWER_EQUIPMENT}/{collection_name}/{id}"));
    };
    let path = format!("{}/Sensors", equipment_path(&meter));
    Json(json!({
        "@odata.type": "#SensorCollection.SensorCollection",
        "@odata.id": path,
        "Name": "Sensors",
        "Members@odata.count": 2,
        "Members": [
            { "@odata.id": format!("{path}/Power") },
            { "@odata.id": format!("{path}/Energy") },
        ],
    }))
    .into_response()
}

async fn sensor(
    State(shared): State<Arc<Shared>>,
    Path((collection_name, id, sensor)): Path<(String, String, String)>,
) -> Response {
    let Some(meter) = find(&shared, &collection_name, &id) else {
        return not_found(&format!("{POWER_EQUIPMENT}/{collection_name}/{id}"));
    };
    let path = format!("{}/Sensors/{sensor}", equipment_path(&meter));
    let reading = match shared.hall().meter_reading(&meter.id, crate::now_ms()) {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let (reading_type, value, unit) = match sensor.as_str() {
        "Power" => ("Power", reading.power_watts, "W"),
        "Energy" => ("EnergykWh", reading.energy_joules / J_PER_KWH, "kW.h"),
        _ => return not_found(&path),
    };
    Json(json!({
        "@odata.type": "#Sensor.v1_7_0.Sensor",
        "@odata.id": path,
        "Id": sensor,
        "Name": format!("{} {sensor}", meter.id),
        "ReadingType": reading_type,
        "Reading": value,
        "ReadingUnits": unit,
        "Status": { "State": "Enabled", "Health": "OK" },
    }))
    .into_response()
}

fn not_found(path: &str) -> Response {
    error_response(StatusCode::NOT_FOUND, &format!("no resource at {path}"))
}
