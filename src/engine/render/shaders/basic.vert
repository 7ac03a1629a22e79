#version 330 core
// The engine's built-in lit shader, vertex stage. A project overrides it with its own
// shaders/basic.vert; the renderer provides exactly the inputs declared here.

in vec3 position;              // object space, metres
in vec3 normal;                // object space
in vec2 texcoord;              // (0, 0) = the texture's bottom-left corner

uniform mat4 u_model;          // object -> world
uniform mat4 u_view;           // world -> eye (one per eye)
uniform mat4 u_projection;     // eye -> clip (one per eye, asymmetric)
uniform mat3 u_normal_matrix;  // inverse transpose of u_model's 3x3

out vec3 v_normal;             // world space, not normalised
out vec3 v_world_position;
out vec2 v_texcoord;

void main() {
    vec4 world = u_model * vec4(position, 1.0);
    v_world_position = world.xyz;
    v_normal = u_normal_matrix * normal;
    v_texcoord = texcoord;
    gl_Position = u_projection * u_view * world;
}
