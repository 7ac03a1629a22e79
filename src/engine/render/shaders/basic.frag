#version 330 core
// The engine's built-in lit shader, fragment stage: Lambert diffuse plus ambient.

in vec3 v_normal;
in vec3 v_world_position;

uniform vec4 u_color;            // Material.color
uniform vec3 u_light_direction;  // world space, unit length, pointing towards the light
uniform float u_ambient;         // 0..1, light reaching faces turned away

out vec4 frag_color;

void main() {
    float diffuse = max(dot(normalize(v_normal), u_light_direction), 0.0);
    float light = u_ambient + (1.0 - u_ambient) * diffuse;
    frag_color = vec4(u_color.rgb * light, u_color.a);
}
