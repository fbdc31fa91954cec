r"""The demo data set: real terrain, a small meteorology and an advection-diffusion transport model.

``make_demo_data`` writes one netCDF file per year, ``demo_<year>.nc``, in exactly the layout of
the users' input files (see :mod:`aqnet.data.io`): dimensions ``(time, y, x)`` with rows from north
to south (as most reanalysis files are; the cache flips them), 2-D ``lat2d``/``lon2d`` coordinates,
an hourly ``time`` coordinate starting on 1 January of the year, the 13 variables of
``aqnet.config.INPUT_VARIABLES`` with ``units`` attributes (``elevation`` and ``population``
static, without time) and the domain mask ``mask`` (1 = land, inside the domain). Everything is a
deterministic function of ``(seed, year)``: the static fields (cities, ports) of ``seed``, the
weather noise and the daily emission factors of ``(seed, year)``.

Modules: :mod:`~aqnet.data.demo.terrain` (the DEM on the demo grid, the terrain-deflected wind),
:mod:`~aqnet.data.demo.weather` (the synoptic cycle and the meteorology),
:mod:`~aqnet.data.demo.emissions` (population and sources), :mod:`~aqnet.data.demo.transport`
(advection, diffusion, decay), :mod:`~aqnet.data.demo.simulate` (one year, with the chemistry) and
:mod:`~aqnet.data.demo.files` (the Dataset and the netCDF files); every public name is importable
from ``aqnet.data.demo``.

Every year has the same climate - the same train of weather systems, the same emissions; years
differ only by the synoptic phase on 1 January and by weather noise. A system passes every
``SYNOPTIC_PERIOD_H`` = 90 h, so each one arrives 6 h later in the day than the one before: a demo
year of a whole number of periods sees every wind regime equally often, and a year of four
(360 h) meets each regime at four evenly spread hours of the day (stagnation by night, when the
mixed layer is shallow, traps far more than by day). Such years share their statistics, so the
normalisation statistics of the training years fit the validation year. Within a year the
weather evolves smoothly and predictably (the veering wind, pressure and temperature of a passing
system) and the pollutant fields follow it with lifetimes of hours to days, so the fields 12-96 h
ahead are largely predictable from the present fields, the terrain and the emissions: that is
what the forecaster has to learn.

Terrain
    The DEM that matplotlib ships as sample data (``topobathy.npz``: 91 x 120 cells, 48.0-50.0 N,
    126.0-122.0 W, the Salish Sea with the Olympic Mountains, Vancouver Island, the Coast
    Mountains and the Cascades) is interpolated bilinearly onto the demo grid, a regular grid over
    the DEM's own latitude/longitude extent; the sea is clipped to 0 m and is the region outside
    the domain mask. Distances use :math:`\Delta x = R\cos\varphi\,\Delta\lambda`,
    :math:`\Delta y = R\,\Delta\varphi` (a Cartesian approximation on this small domain).

Synoptic weather
    A cyclone passes every :math:`P` = 90 h (``SYNOPTIC_PERIOD_H``). Its phase

    .. math:: \theta(t) = \theta_0 + 2\pi t / P + \epsilon_\theta(t)

    has a random start :math:`\theta_0` per year and a red-noise jitter :math:`\epsilon_\theta`
    (an AR(1) process, standard deviation 0.2 rad, memory 48 h); everything synoptic below is a
    function of :math:`\theta`, so the present weather tells where the cycle stands and what
    follows.

Wind (m s-1)
    A synoptic wind of speed :math:`S(t) = (S_0 + S_1 \cos(\theta - \pi/4))\,(1 +
    \epsilon_S(t))` (:math:`S_0` = 5, :math:`S_1` = 2.5 m s-1; strongest in the south-westerlies
    around the low, weakest in the stagnant north-easterlies under the following high;
    :math:`\epsilon_S` red noise of standard deviation 0.1 and memory 24 h, :math:`1 +
    \epsilon_S` floored at 0.25) blowing toward
    :math:`\phi(t) = \pi/2 - \theta(t) + 0.3 (y' - 1/2)`: a southerly ahead of the system that
    veers (turns clockwise) through westerly, northerly and easterly, through all 16 scan sectors
    once per period, with a weak shear over the normalised northing :math:`y'`. It is 25 % faster
    over the sea (lower roughness), plus a diurnal slope wind
    :math:`A_d \sin(2\pi (\tau - 8) / 24)\, \nabla h / (|\nabla h| + s_r)` with :math:`A_d` = 2 m
    s-1 and :math:`s_r` = 0.05 (upslope by day, downslope by night; :math:`\tau` is the local solar
    hour, UTC + longitude / 15). The terrain then deflects it: with the uphill unit vector
    :math:`\hat n = \nabla h / |\nabla h|` and the upslope gradient along the flow
    :math:`s_\parallel = \max(0, \mathbf{u} \cdot \nabla h) / |\mathbf{u}|`, the component into
    the slope is removed by the fraction :math:`\beta = 1 - e^{-s_\parallel / s_b}`:

    .. math:: \mathbf{u} \leftarrow \mathbf{u} - \beta \max(0, \mathbf{u}\cdot\hat n)\,\hat n

    so flow against a steep slope is blocked and turned along the contours (``terrain_wind``;
    :math:`s_b` = ``BLOCKING_SLOPE``). That is ``data.demo.blocked_flow: upslope``. The default,
    ``downslope``, uses the downhill unit vector :math:`-\hat n` (and the downslope gradient)
    instead: flow *descending* a steep slope is blocked, so a low receptor does not see a high
    source -- the effect the TopoFlow bias (a low query penalised for attending a high key) can
    represent, which makes the demo a known-answer test of the verdict.

Temperature (K), pressure (Pa), humidity (%)
    :math:`T = T_{sea} + D \cos(2\pi(\tau - 15)/24) - \Gamma h` with the sea-level temperature
    :math:`T_{sea} = 277 + A_T \cos\theta - 0.7 (\varphi - \varphi_0)` (:math:`A_T` = 3 K: the
    warm sector in the southerlies, cold air behind the front), the lapse rate :math:`\Gamma` =
    6.5 K km-1 and a diurnal range :math:`D` of 4 K over land, 1 K over the sea. Surface pressure
    from the barometric formula, :math:`p = p_0(t) (1 - \Gamma h / T_0)^{g M / (R \Gamma)}` with
    the synoptic sea-level pressure :math:`p_0 = 101325\,Pa - A_p \cos(\theta - \pi/4)`
    (:math:`A_p` = 900 Pa: lowest as the low passes, highest in the stagnant phase). Relative
    humidity :math:`100\, e / e_s(T)` (Magnus formula) with the vapour
    pressure :math:`e = 0.85\, e_s(T_{sea}) e^{-h/2500\,m} (0.75 + 0.25 e^{-d_{sea}/30\,km}) (1 +
    0.3 w')`, where :math:`w' = \mathrm{clip}(\mathbf{u}\cdot\nabla h / 0.2\,m\,s^{-1}, 0, 1)` is
    the orographic lift; clipped to [5, 100] %.

Population (people km-2) and emissions
    On land only: :math:`20 + 60 e^{-h/150} + 200 e^{-h/150} e^{-d_{sea}/6\,km}` plus four
    Gaussian cities placed (seeded) on low coastal land. Traffic :math:`E_{tr}` is proportional to
    population with a rush-hour profile (peaks 08 and 18 local time), residential heating to
    population times :math:`\mathrm{clip}((288 - T)/10, 0, 2)` with an evening peak, three seeded
    ports on the coast emit SO2, a shipping band over the sea within 15 km of land emits SO2 and
    NO2, and sea salt (PM10) grows with the wind speed squared over the sea. A smooth daily factor
    :math:`\exp(0.15\,\xi_d)` modulates the anthropogenic emissions. Emission tendencies are
    divided by the mixing height :math:`H(t)` relative to 600 m (300 m at night, 1200 m at
    midday over land; 500 m over the sea).

Transport and chemistry, per pollutant :math:`c` (operator split: half an hour of chemistry,
one hour of transport, half an hour of chemistry)
    .. math::

        \partial_t c + \mathbf{u}\cdot\nabla c = \nabla\cdot(K_f \nabla c) + S - (c - c_b)/\tau

    with first-order upwind differences for the advection (the deflected wind above), face
    diffusivities damped across steep steps of the terrain,
    :math:`K_f = K e^{-|\Delta h / \Delta x| / s_b}` (:math:`K` = 1500 m2 s-1), inflow at the
    background :math:`c_b` through the open boundaries, and as many sub-steps per hour as keep the
    explicit scheme a convex combination (each cell's total exchange rate times the sub-step below
    0.9). Where the wind is blocked in front of a mountain the air stalls and keeps collecting the
    basin's emissions; the lee side receives air that crossed slowly over the unpopulated
    mountains, decaying on the way. Decay and sources are integrated exactly,
    :math:`c \leftarrow c e^{-\Delta t/\tau} + (S + c_b/\tau)\tau(1 - e^{-\Delta t/\tau})`, with
    lifetimes :math:`\tau` of 48 h (PM2.5), 18 h (PM10), 24 h (SO2), 4 h by day / 16 h by night
    (NO2) and 30 days (CO); half of the SO2 lost is a PM2.5 source (secondary sulfate). Ozone
    relaxes to an elevation-dependent background over 24 h, is produced in daylight and titrated
    by NO2, integrated implicitly (hence anti-correlated with NO2 and never negative):

    .. math::

        o_3 \leftarrow \frac{o_3 + \Delta t\,(o_b/\tau_o + P\,\mathrm{sun}(\tau))}
                            {1 + \Delta t\,(1/\tau_o + k\,\mathrm{NO_2})}

    Every step is a convex combination of non-negative values plus non-negative sources, so no
    concentration is ever negative. A 48-hour spin-up precedes the first stored hour.
"""

from aqnet.data.demo.emissions import EMISSION, StaticFields, static_fields
from aqnet.data.demo.files import LONG_NAMES, UNITS, demo_dataset, make_demo_data
from aqnet.data.demo.simulate import (
    BACKGROUND,
    LIFETIME_H,
    NO2_LIFETIME_DAY_H,
    NO2_LIFETIME_NIGHT_H,
    O3_PER_KM,
    O3_PRODUCTION,
    O3_RELAX_H,
    O3_TITRATION,
    SPINUP_H,
    SULFATE_YIELD,
    simulate_year,
)
from aqnet.data.demo.terrain import (
    BLOCKED_FLOWS,
    BLOCKING_SLOPE,
    DEM_SAMPLE,
    DEMO_BLOCKED_FLOW,
    EARTH_RADIUS_M,
    Terrain,
    load_terrain,
    terrain_gradient,
    terrain_wind,
)
from aqnet.data.demo.transport import (
    DIFFUSIVITY_M2_S,
    MAX_COURANT,
    Transport,
    relax,
    simulate_tracer,
)
from aqnet.data.demo.weather import (
    GAS_CONSTANT,
    GRAVITY,
    LAPSE_RATE,
    MOLAR_MASS_AIR,
    P_STANDARD,
    PHASE_MEMORY_H,
    PHASE_NOISE_RAD,
    PRESSURE_AMP,
    SPEED_AMP,
    SPEED_MEAN,
    SPEED_MEMORY_H,
    SPEED_NOISE,
    SYNOPTIC_PERIOD_H,
    T_STANDARD,
    TEMP_AMP,
    Weather,
    meteorology,
)

__all__ = [
    "BACKGROUND", "BLOCKED_FLOWS", "BLOCKING_SLOPE", "DEMO_BLOCKED_FLOW", "DEM_SAMPLE",
    "DIFFUSIVITY_M2_S", "EARTH_RADIUS_M", "EMISSION", "GAS_CONSTANT", "GRAVITY", "LAPSE_RATE",
    "LIFETIME_H", "LONG_NAMES", "MAX_COURANT", "MOLAR_MASS_AIR", "NO2_LIFETIME_DAY_H",
    "NO2_LIFETIME_NIGHT_H", "O3_PER_KM", "O3_PRODUCTION", "O3_RELAX_H", "O3_TITRATION",
    "PHASE_MEMORY_H", "PHASE_NOISE_RAD", "PRESSURE_AMP", "P_STANDARD", "SPEED_AMP", "SPEED_MEAN",
    "SPEED_MEMORY_H", "SPEED_NOISE", "SPINUP_H", "SULFATE_YIELD", "SYNOPTIC_PERIOD_H",
    "TEMP_AMP", "T_STANDARD", "UNITS", "StaticFields", "Terrain", "Transport", "Weather",
    "demo_dataset", "load_terrain", "make_demo_data", "meteorology", "relax", "simulate_tracer",
    "simulate_year", "static_fields", "terrain_gradient", "terrain_wind",
]  # fmt: skip
